//! Which apps a list shows (`GET /v2/apps?id=&cmd=&label=`): Marathon's `AppsResource.search`
//! criteria and its label selector syntax.

use std::collections::BTreeMap;

use crate::app::AppDefinition;

/// Which apps a list shows: Marathon's `AppsResource.search`, every given criterion met. `id`
/// and `cmd` keep the apps whose id (command) contains them, ignoring case as Marathon does
/// (it lowercases both sides); an app with no command matches no `cmd`. `labels`: a label
/// selector.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppSelector {
    pub id: Option<String>,
    pub cmd: Option<String>,
    pub labels: Option<LabelSelectors>,
}

impl AppSelector {
    pub fn matches(&self, app: &AppDefinition) -> bool {
        let contains = |haystack: &str, needle: &str| haystack.to_lowercase().contains(&needle.to_lowercase());
        self.id.as_deref().is_none_or(|id| contains(&app.id.to_string(), id))
            && self.cmd.as_deref().is_none_or(|cmd| app.cmd.as_deref().is_some_and(|c| contains(c, cmd)))
            && self.labels.as_ref().is_none_or(|labels| labels.matches(&app.labels))
    }
}

/// A label selector (Marathon's `LabelSelectorParsers`): selectors joined by `,`, every one
/// of which an app's labels must satisfy.
/// - `key`: the app has the label;
/// - `key == value`, `key != value`: it has it, and its value is (is not) `value`;
/// - `key in (a, b)`, `key notin (a, b)`: it has it, and its value is (is not) one of them.
///
/// Keys and values are runs of `A-Za-z0-9`, `-`, `_` and `.`; any other character is written
/// escaped with `\` (`a\ b` for `a b`, `\!` for `!`). Whitespace between tokens is ignored.
/// As in Marathon, there is no negated existence (`!key`), and an empty selector keeps every
/// app.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelectors(Vec<LabelSelector>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelSelector {
    Exists(String),
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A label selector that does not parse; Marathon's message (answered with a 422).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Can not parse label selector {input}. Reason: {reason}")]
pub struct LabelSelectorError {
    input: String,
    reason: String,
}

impl LabelSelectors {
    pub fn parse(input: &str) -> Result<Self, LabelSelectorError> {
        let mut parser = SelectorParser { rest: input };
        parser.selectors().map(LabelSelectors).map_err(|reason| LabelSelectorError { input: input.to_owned(), reason })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|selector| selector.matches(labels))
    }
}

impl LabelSelector {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            LabelSelector::Exists(key) => labels.contains_key(key),
            LabelSelector::Equals(key, value) => labels.get(key).is_some_and(|v| v == value),
            LabelSelector::NotEquals(key, value) => labels.get(key).is_some_and(|v| v != value),
            LabelSelector::In(key, set) => labels.get(key).is_some_and(|v| set.contains(v)),
            LabelSelector::NotIn(key, set) => labels.get(key).is_some_and(|v| !set.contains(v)),
        }
    }
}

/// A recursive-descent reading of Marathon's grammar:
/// `selectors := [selector {"," selector}]`, `selector := term (("=="|"!=") term | ("in"|"notin") set)?`,
/// `set := "(" [term {"," term}] ")"`. Errors say what was expected where.
struct SelectorParser<'a> {
    rest: &'a str,
}

impl SelectorParser<'_> {
    fn selectors(&mut self) -> Result<Vec<LabelSelector>, String> {
        let mut selectors = Vec::new();
        self.skip_whitespace();
        if self.rest.is_empty() {
            return Ok(selectors);
        }
        loop {
            selectors.push(self.selector()?);
            self.skip_whitespace();
            if self.rest.is_empty() {
                return Ok(selectors);
            }
            self.expect(',')?;
        }
    }

    fn selector(&mut self) -> Result<LabelSelector, String> {
        let key = self.term()?;
        self.skip_whitespace();
        if self.eat("==") {
            return Ok(LabelSelector::Equals(key, self.term()?));
        }
        if self.eat("!=") {
            return Ok(LabelSelector::NotEquals(key, self.term()?));
        }
        if self.eat("notin") {
            return Ok(LabelSelector::NotIn(key, self.set()?));
        }
        if self.eat("in") {
            return Ok(LabelSelector::In(key, self.set()?));
        }
        Ok(LabelSelector::Exists(key))
    }

    fn set(&mut self) -> Result<Vec<String>, String> {
        self.expect('(')?;
        let mut values = Vec::new();
        self.skip_whitespace();
        if self.eat(")") {
            return Ok(values);
        }
        loop {
            values.push(self.term()?);
            self.skip_whitespace();
            if self.eat(")") {
                return Ok(values);
            }
            self.expect(',')?;
        }
    }

    /// A key or value: `(\\.|[-A-Za-z0-9_.])+`, its escapes undone.
    fn term(&mut self) -> Result<String, String> {
        self.skip_whitespace();
        let mut term = String::new();
        let mut end = 0;
        let mut chars = self.rest.char_indices();
        while let Some((_, c)) = chars.next() {
            if c == '\\' {
                let Some((at, escaped)) = chars.next() else { break };
                term.push(escaped);
                end = at + escaped.len_utf8();
            } else if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                term.push(c);
                end += c.len_utf8();
            } else {
                break;
            }
        }
        if end == 0 {
            return Err(format!("expected a label key or value at {:?}", self.rest));
        }
        self.rest = &self.rest[end..];
        Ok(term)
    }

    fn expect(&mut self, wanted: char) -> Result<(), String> {
        self.skip_whitespace();
        match self.rest.strip_prefix(wanted) {
            Some(rest) => {
                self.rest = rest;
                Ok(())
            }
            None if self.rest.is_empty() => Err(format!("expected '{wanted}' but the selector ended")),
            None => Err(format!("expected '{wanted}' at {:?}", self.rest)),
        }
    }

    fn eat(&mut self, token: &str) -> bool {
        match self.rest.strip_prefix(token) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    /// Java's `\s`, which Marathon's parser skips before every token.
    fn skip_whitespace(&mut self) {
        self.rest = self.rest.trim_start_matches([' ', '\t', '\n', '\u{b}', '\u{c}', '\r']);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::app::PathId;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn parsed(input: &str) -> Vec<LabelSelector> {
        LabelSelectors::parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}")).0
    }

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| (*v).to_owned()).collect()
    }

    #[test]
    fn every_kind_of_selector_parses() {
        use LabelSelector::*;
        assert_eq!(parsed("partition"), [Exists("partition".into())]);
        assert_eq!(parsed("test == foo"), [Equals("test".into(), "foo".into())]);
        assert_eq!(parsed("test==foo"), [Equals("test".into(), "foo".into())]);
        assert_eq!(parsed("test != foo"), [NotEquals("test".into(), "foo".into())]);
        assert_eq!(
            parsed("environment in (production, qa)"),
            [In("environment".into(), strings(&["production", "qa"]))]
        );
        assert_eq!(parsed("tier notin (frontend,backend)"), [NotIn("tier".into(), strings(&["frontend", "backend"]))]);
        assert_eq!(parsed("k in ()"), [In("k".into(), vec![])]);
        assert_eq!(
            parsed("a in (t1, t2, t3), b notin (t1), c, d"),
            [
                In("a".into(), strings(&["t1", "t2", "t3"])),
                NotIn("b".into(), strings(&["t1"])),
                Exists("c".into()),
                Exists("d".into())
            ]
        );
        assert_eq!(parsed("traefik.enable==true"), [Equals("traefik.enable".into(), "true".into())]);
        assert_eq!(
            parsed("HAPROXY_0_VHOST , my-label_1"),
            [Exists("HAPROXY_0_VHOST".into()), Exists("my-label_1".into())]
        );
    }

    #[test]
    fn escapes_carry_any_character() {
        use LabelSelector::*;
        assert_eq!(parsed(r"\!\!\! in (\-\-\-, \&\&\&, \+\+\+)"), [In("!!!".into(), strings(&["---", "&&&", "+++"]))]);
        assert_eq!(parsed(r"owner == John\ Doe"), [Equals("owner".into(), "John Doe".into())]);
        assert_eq!(parsed(r"url==http\:\/\/x\,y"), [Equals("url".into(), "http://x,y".into())]);
        assert_eq!(parsed(r"\к\л\ю\ч"), [Exists("ключ".into())], "non-ASCII is escaped");
    }

    #[test]
    fn the_empty_selector_keeps_everything() {
        assert!(parsed("").is_empty());
        assert!(parsed("   ").is_empty());
        assert!(LabelSelectors::parse("").unwrap().matches(&labels(&[])));
    }

    #[test]
    fn malformed_selectors_are_refused_with_marathons_message() {
        for input in [
            "!k",
            "a,",
            ",a",
            "a b",
            "a = b",
            "a ==",
            "a in b",
            "a in (b",
            "a in (b,)",
            "a inx",
            "a\\",
            "ключ",
            "a == (b)",
        ] {
            let error = LabelSelectors::parse(input).expect_err(input);
            assert!(
                error.to_string().starts_with(&format!("Can not parse label selector {input}. Reason: ")),
                "{error}"
            );
        }
    }

    #[test]
    fn selectors_need_the_label_and_all_must_hold() {
        let app = labels(&[("env", "prod"), ("tier", "web"), ("owner", "John Doe")]);
        let keeps = |input: &str| LabelSelectors::parse(input).unwrap().matches(&app);
        assert!(keeps("env"));
        assert!(!keeps("missing"));
        assert!(keeps("env==prod") && !keeps("env==qa"));
        assert!(keeps("env!=qa") && !keeps("env!=prod"));
        assert!(!keeps("missing!=x"), "!= needs the label, as Marathon's does");
        assert!(keeps("env in (qa, prod)") && !keeps("env in (qa)"));
        assert!(keeps("env notin (qa)") && !keeps("env notin (prod, qa)"));
        assert!(!keeps("missing notin (x)"));
        assert!(keeps(r"owner==John\ Doe"));
        assert!(keeps("env==prod, tier in (web)") && !keeps("env==prod, tier==db"));
    }

    #[test]
    fn id_and_cmd_match_ignoring_case() {
        let mut app = AppDefinition::new(PathId::parse("/prod/web").unwrap());
        app.cmd = Some("python3 -m HTTP.server".into());
        let select = |app: &AppDefinition, id: Option<&str>, cmd: Option<&str>| {
            AppSelector { id: id.map(Into::into), cmd: cmd.map(Into::into), labels: None }.matches(app)
        };
        assert!(select(&app, None, None));
        assert!(select(&app, Some("prod/w"), None) && select(&app, Some("/PROD"), None));
        assert!(!select(&app, Some("db"), None));
        assert!(select(&app, None, Some("http.SERVER")) && !select(&app, None, Some("nginx")));
        app.cmd = None;
        assert!(!select(&app, None, Some("")), "an app without a command matches no cmd");
    }
}
