//! Small shared pieces of the printed reports.

/// The "met" column of a table with targets.
pub fn verdict(met: bool) -> &'static str {
    if met { "yes" } else { "NO" }
}
