//! Placement constraints: `[["hostname", "UNIQUE"], ["rack", "GROUP_BY", "3"]]`.
//!
//! Semantics follow Marathon's `Constraints.meetsConstraint`:
//! - the field is `hostname` (or `@hostname`), or else the name of an agent attribute;
//!   `@region` and `@zone` read the agent attributes `region` and `zone` (Marina agents
//!   advertise their fault domain as plain attributes);
//! - an agent lacking the attribute satisfies only `UNLIKE` (Marathon's documented rule);
//! - `LIKE`/`UNLIKE` values are regular expressions that must match the whole value, as
//!   Java's `String.matches` does. They are compiled with the `regex` crate, whose syntax is
//!   Java's minus look-around and back-references, which are therefore rejected.

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

use regex::Regex;
use serde::ser::SerializeSeq;
use serde::{Serialize, Serializer};

/// A constraint operator, spelled in JSON as Marathon spells it (case-sensitive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operator {
    /// No two instances share the field's value.
    Unique,
    /// All instances share one value: the given one, or the first instance's.
    Cluster,
    /// Spread instances evenly over the field's values (optionally: over at least N values).
    GroupBy,
    /// The value matches a regular expression.
    Like,
    /// The value does not match a regular expression.
    Unlike,
    /// At most N instances per value.
    MaxPer,
    /// The value equals the given one.
    Is,
}

impl Operator {
    pub const ALL: [Operator; 7] = [
        Operator::Unique,
        Operator::Cluster,
        Operator::GroupBy,
        Operator::Like,
        Operator::Unlike,
        Operator::MaxPer,
        Operator::Is,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Operator::Unique => "UNIQUE",
            Operator::Cluster => "CLUSTER",
            Operator::GroupBy => "GROUP_BY",
            Operator::Like => "LIKE",
            Operator::Unlike => "UNLIKE",
            Operator::MaxPer => "MAX_PER",
            Operator::Is => "IS",
        }
    }

    /// Exact, upper-case names only, as in Marathon (`"unique"` is refused).
    pub fn parse(name: &str) -> Option<Operator> {
        Operator::ALL.into_iter().find(|op| op.as_str() == name)
    }
}

/// Marathon's complaint about an unknown operator.
pub(crate) const UNKNOWN_OPERATOR: &str =
    "Constraint operator must be one of the following UNIQUE, CLUSTER, GROUP_BY, LIKE, MAX_PER, UNLIKE or IS";

/// One placement constraint. Written to JSON as `[field, OPERATOR]` or `[field, OPERATOR, value]`.
#[derive(Clone)]
pub struct Constraint {
    pub field: String,
    pub operator: Operator,
    pub value: Option<String>,
    /// The compiled `LIKE`/`UNLIKE` pattern, built on first use; `None` inside if invalid.
    pattern: OnceLock<Option<Regex>>,
}

/// What placement knows about an agent, or about the agent an instance already runs on.
#[derive(Debug, Clone, Copy)]
pub struct AgentView<'a> {
    pub hostname: &'a str,
    /// Attribute names and values, text as Mesos formats them (`rack:r1`, `{a,b}`, `[1-2]`).
    pub attributes: &'a [(String, String)],
}

impl<'a> AgentView<'a> {
    pub fn attribute(&self, name: &str) -> Option<&'a str> {
        self.attributes.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// What a constraint's field reads from an agent.
enum Field<'f> {
    Hostname,
    Attribute(&'f str),
}

impl Constraint {
    pub fn new(field: impl Into<String>, operator: Operator, value: Option<String>) -> Self {
        Constraint { field: field.into(), operator, value, pattern: OnceLock::new() }
    }

    /// Marathon's complaints about this constraint, worded as Marathon words them.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.field.is_empty() {
            problems.push("Missing field and operator".to_owned());
        }
        let value = self.value.as_deref();
        let is_int = |v: &str| v.parse::<i32>().is_ok();
        match self.operator {
            Operator::Unique if value.is_some() => problems.push("Value specified but not used".to_owned()),
            Operator::GroupBy if value.is_some_and(|v| !is_int(v)) => {
                problems.push("Value was specified but is not a number".to_owned())
            }
            Operator::MaxPer if !value.is_some_and(is_int) => {
                problems.push("Value was not specified or is not a number".to_owned())
            }
            Operator::Like | Operator::Unlike => match value {
                None => problems.push("A regular expression value must be provided".to_owned()),
                Some(v) if self.regex().is_none() => problems.push(format!("'{v}' is not a valid regular expression")),
                Some(_) => {}
            },
            Operator::Is if value.is_none() => problems.push("Missing value".to_owned()),
            _ => {}
        }
        problems
    }

    /// Whether an instance may be placed on `candidate`, given the agents of the app's
    /// instances already placed (one entry per instance, so an agent may repeat).
    pub fn satisfied(&self, candidate: &AgentView<'_>, placed: &[AgentView<'_>]) -> bool {
        match self.field() {
            Field::Hostname => self.check(candidate.hostname, placed, |a| Some(a.hostname)),
            Field::Attribute(name) => match candidate.attribute(name) {
                Some(value) => self.check(value, placed, |a| a.attribute(name)),
                None => self.operator == Operator::Unlike,
            },
        }
    }

    fn field(&self) -> Field<'_> {
        match self.field.as_str() {
            "hostname" | "@hostname" => Field::Hostname,
            "@region" => Field::Attribute("region"),
            "@zone" => Field::Attribute("zone"),
            name => Field::Attribute(name),
        }
    }

    fn check<'a>(
        &self,
        value: &str,
        placed: &[AgentView<'a>],
        key: impl Fn(&AgentView<'a>) -> Option<&'a str>,
    ) -> bool {
        let expected = self.value.as_deref();
        match self.operator {
            Operator::Unique => placed.iter().all(|a| key(a) != Some(value)),
            Operator::Cluster => expected.is_none_or(|e| e == value) && placed.iter().all(|a| key(a) == Some(value)),
            Operator::GroupBy => {
                let minimum = match expected {
                    Some("inf") => usize::MAX,
                    Some(v) => v.parse::<usize>().unwrap_or(0),
                    None => 0,
                };
                let counts = count_by(placed, key);
                let smallest = counts.values().copied().min().unwrap_or(0);
                // A value not used yet is always welcome; a used one only if it is among the
                // least used and at least `minimum` values are in use.
                counts.get(&Some(value)).is_none_or(|&count| counts.len() >= minimum && count == smallest)
            }
            Operator::MaxPer => match expected.and_then(|v| v.parse::<usize>().ok()) {
                Some(max) => count_by(placed, key).get(&Some(value)).is_none_or(|&count| count < max),
                None => false,
            },
            Operator::Like => self.regex().is_some_and(|re| re.is_match(value)),
            Operator::Unlike => self.regex().is_some_and(|re| !re.is_match(value)),
            Operator::Is => expected.is_some_and(|e| {
                e == value || matches!((e.parse::<f64>(), value.parse::<f64>()), (Ok(a), Ok(b)) if a == b)
            }),
        }
    }

    /// The `LIKE`/`UNLIKE` pattern, anchored at both ends as Java's `String.matches` is.
    fn regex(&self) -> Option<&Regex> {
        self.pattern.get_or_init(|| self.value.as_deref().and_then(|v| Regex::new(&format!("^(?:{v})$")).ok())).as_ref()
    }
}

fn count_by<'a>(
    placed: &[AgentView<'a>],
    key: impl Fn(&AgentView<'a>) -> Option<&'a str>,
) -> HashMap<Option<&'a str>, usize> {
    let mut counts = HashMap::new();
    for agent in placed {
        *counts.entry(key(agent)).or_insert(0) += 1;
    }
    counts
}

/// The first of `constraints` that `candidate` fails, if any: what `/v2/queue` reports.
pub fn first_unsatisfied<'c>(
    constraints: &'c [Constraint],
    candidate: &AgentView<'_>,
    placed: &[AgentView<'_>],
) -> Option<&'c Constraint> {
    constraints.iter().find(|c| !c.satisfied(candidate, placed))
}

impl PartialEq for Constraint {
    fn eq(&self, other: &Self) -> bool {
        self.field == other.field && self.operator == other.operator && self.value == other.value
    }
}

impl fmt::Debug for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Constraint({self})")
    }
}

/// `hostname:UNIQUE`, `rack:GROUP_BY:3`.
impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.field, self.operator.as_str())?;
        if let Some(value) = &self.value {
            write!(f, ":{value}")?;
        }
        Ok(())
    }
}

impl Serialize for Constraint {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(2 + usize::from(self.value.is_some())))?;
        seq.serialize_element(&self.field)?;
        seq.serialize_element(self.operator.as_str())?;
        if let Some(value) = &self.value {
            seq.serialize_element(value)?;
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(field: &str, op: Operator, value: Option<&str>) -> Constraint {
        Constraint::new(field, op, value.map(str::to_owned))
    }

    struct Agent {
        hostname: &'static str,
        attributes: Vec<(String, String)>,
    }

    fn agent(hostname: &'static str, attrs: &[(&str, &str)]) -> Agent {
        Agent { hostname, attributes: attrs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() }
    }

    impl Agent {
        fn view(&self) -> AgentView<'_> {
            AgentView { hostname: self.hostname, attributes: &self.attributes }
        }
    }

    fn views<'a>(agents: &[&'a Agent]) -> Vec<AgentView<'a>> {
        agents.iter().map(|a| a.view()).collect()
    }

    #[test]
    fn unique_by_hostname_and_attribute() {
        let a = agent("a", &[("rack", "r1")]);
        let b = agent("b", &[("rack", "r1")]);
        let unique_host = c("hostname", Operator::Unique, None);
        assert!(unique_host.satisfied(&b.view(), &views(&[&a])));
        assert!(!unique_host.satisfied(&a.view(), &views(&[&a])));
        assert!(unique_host.satisfied(&a.view(), &[]));
        let unique_rack = c("rack", Operator::Unique, None);
        assert!(!unique_rack.satisfied(&b.view(), &views(&[&a])));
        assert!(c("@hostname", Operator::Unique, None).satisfied(&b.view(), &views(&[&a])));
    }

    #[test]
    fn cluster_with_and_without_value() {
        let a = agent("a", &[("rack", "r1")]);
        let b = agent("b", &[("rack", "r2")]);
        let on_r1 = c("rack", Operator::Cluster, Some("r1"));
        assert!(on_r1.satisfied(&a.view(), &[]));
        assert!(!on_r1.satisfied(&b.view(), &[]));
        let together = c("rack", Operator::Cluster, None);
        assert!(together.satisfied(&b.view(), &[]), "the first instance goes anywhere");
        assert!(!together.satisfied(&b.view(), &views(&[&a])), "later ones follow it");
        assert!(together.satisfied(&a.view(), &views(&[&a, &a])));
        let on_host = c("hostname", Operator::Cluster, Some("a"));
        assert!(on_host.satisfied(&a.view(), &[]) && !on_host.satisfied(&b.view(), &[]));
    }

    #[test]
    fn group_by_spreads_evenly() {
        let r1 = agent("a", &[("rack", "r1")]);
        let r2 = agent("b", &[("rack", "r2")]);
        let r3 = agent("c", &[("rack", "r3")]);
        let spread = c("rack", Operator::GroupBy, None);
        // An unused value is always fine; a used one must be among the least used.
        assert!(spread.satisfied(&r2.view(), &views(&[&r1])));
        assert!(spread.satisfied(&r1.view(), &views(&[&r1])), "without a count, Marathon only knows r1");
        assert!(!spread.satisfied(&r1.view(), &views(&[&r1, &r1, &r2])));
        assert!(spread.satisfied(&r2.view(), &views(&[&r1, &r1, &r2])));
        let over_three = c("rack", Operator::GroupBy, Some("3"));
        assert!(!over_three.satisfied(&r1.view(), &views(&[&r1, &r2])), "r3 must be used first");
        assert!(over_three.satisfied(&r3.view(), &views(&[&r1, &r2])));
        assert!(over_three.satisfied(&r1.view(), &views(&[&r1, &r2, &r3])));
        let by_host = c("hostname", Operator::GroupBy, Some("2"));
        assert!(!by_host.satisfied(&r1.view(), &views(&[&r1])));
        assert!(by_host.satisfied(&r2.view(), &views(&[&r1])));
    }

    #[test]
    fn max_per_like_unlike_is() {
        let a = agent("host-1.example", &[("rack", "rack-2"), ("cores", "8")]);
        let max2 = c("rack", Operator::MaxPer, Some("2"));
        assert!(max2.satisfied(&a.view(), &views(&[&a])));
        assert!(!max2.satisfied(&a.view(), &views(&[&a, &a])));
        assert!(c("rack", Operator::Like, Some("rack-[1-3]")).satisfied(&a.view(), &[]));
        assert!(!c("rack", Operator::Like, Some("rack")).satisfied(&a.view(), &[]), "full match, not search");
        assert!(!c("rack", Operator::Unlike, Some("rack-[1-3]")).satisfied(&a.view(), &[]));
        assert!(c("hostname", Operator::Like, Some(r"host-\d+\..*")).satisfied(&a.view(), &[]));
        assert!(c("hostname", Operator::Unlike, Some("db.*")).satisfied(&a.view(), &[]));
        assert!(c("rack", Operator::Is, Some("rack-2")).satisfied(&a.view(), &[]));
        assert!(c("cores", Operator::Is, Some("8.0")).satisfied(&a.view(), &[]), "scalars compare as numbers");
        assert!(!c("rack", Operator::Is, Some("rack-3")).satisfied(&a.view(), &[]));
        assert!(c("hostname", Operator::Is, Some("host-1.example")).satisfied(&a.view(), &[]));
    }

    #[test]
    fn a_missing_attribute_satisfies_only_unlike() {
        let bare = agent("a", &[]);
        for op in Operator::ALL {
            let value = match op {
                Operator::Unique | Operator::Cluster | Operator::GroupBy => None,
                Operator::MaxPer => Some("1"),
                _ => Some("x"),
            };
            assert_eq!(c("rack", op, value).satisfied(&bare.view(), &[]), op == Operator::Unlike, "{op:?}");
        }
        let zoned = agent("a", &[("zone", "z1")]);
        assert!(c("@zone", Operator::Is, Some("z1")).satisfied(&zoned.view(), &[]));
        assert!(!c("@region", Operator::Is, Some("r")).satisfied(&zoned.view(), &[]));
    }

    #[test]
    fn problems_are_marathons() {
        let problem = |field: &str, op, value: Option<&str>| c(field, op, value).problems();
        assert_eq!(problem("hostname", Operator::Unique, Some("x")), ["Value specified but not used"]);
        assert_eq!(problem("rack", Operator::GroupBy, Some("three")), ["Value was specified but is not a number"]);
        assert!(problem("rack", Operator::GroupBy, None).is_empty());
        assert_eq!(problem("rack", Operator::MaxPer, None), ["Value was not specified or is not a number"]);
        assert_eq!(problem("rack", Operator::Like, None), ["A regular expression value must be provided"]);
        assert_eq!(problem("rack", Operator::Like, Some("[a-")), ["'[a-' is not a valid regular expression"]);
        assert_eq!(problem("rack", Operator::Is, None), ["Missing value"]);
        assert_eq!(problem("", Operator::Cluster, None), ["Missing field and operator"]);
        assert!(problem("rack", Operator::Cluster, None).is_empty());
    }

    #[test]
    fn json_shape_and_display() {
        let group = c("rack", Operator::GroupBy, Some("3"));
        assert_eq!(serde_json::to_string(&group).unwrap(), r#"["rack","GROUP_BY","3"]"#);
        let unique = c("hostname", Operator::Unique, None);
        assert_eq!(serde_json::to_string(&unique).unwrap(), r#"["hostname","UNIQUE"]"#);
        assert_eq!(group.to_string(), "rack:GROUP_BY:3");
        assert_eq!(Operator::parse("MAX_PER"), Some(Operator::MaxPer));
        assert_eq!(Operator::parse("unique"), None);
        let first = [unique.clone(), group.clone()];
        let a = agent("a", &[("rack", "r1")]);
        assert_eq!(first_unsatisfied(&first, &a.view(), &views(&[&a])), Some(&unique));
        assert_eq!(first_unsatisfied(&first, &a.view(), &[]), None);
    }
}
