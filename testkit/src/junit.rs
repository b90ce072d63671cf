//! Ginkgo's junit reports, read just enough: each case's name, outcome and
//! time. csi-sanity and the Kubernetes storage e2e suite both write them.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Passed,
    /// The failure's message.
    Failed(String),
    /// Why, as the suite said it (ginkgo's "skipped - " dropped).
    Skipped(String),
    /// Marked pending in the suite itself.
    Pending,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// Without ginkgo's "[It] " prefix.
    pub name: String,
    pub outcome: Outcome,
    pub seconds: f64,
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#34;", "\"")
        .replace("&apos;", "'")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#xA;", "\n")
        .replace("&#x9;", "\t")
        .replace("&amp;", "&")
}

/// The value of attribute `name` in the tag text `tag`.
fn attribute(tag: &str, name: &str) -> Option<String> {
    let at = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let len = tag[at..].find('"')?;
    Some(unescape(&tag[at..at + len]))
}

/// The test cases of a ginkgo junit report.
pub fn cases(xml: &str) -> Vec<Case> {
    let mut cases = Vec::new();
    for chunk in xml.split("<testcase ").skip(1) {
        let chunk = chunk.split("</testcase>").next().unwrap_or(chunk);
        let head = format!(" {}", &chunk[..chunk.find('>').unwrap_or(chunk.len())]);
        let name = attribute(&head, "name")
            .unwrap_or_default()
            .replace("[It] ", "");
        let child = |tag: &str| {
            chunk
                .find(&format!("<{tag}"))
                .map(|at| &chunk[at..at + chunk[at..].find('>').unwrap_or(0)])
        };
        let message = |tag: &str| attribute(tag, "message").unwrap_or_default();
        // A failure's message attribute may be empty (the e2e framework's
        // short report): then its text says what failed.
        let text = |tag: &str| {
            let open = chunk.find(&format!("<{tag}"))?;
            let body = open + chunk[open..].find('>')? + 1;
            let end = body + chunk[body..].find(&format!("</{tag}>"))?;
            Some(unescape(chunk[body..end].trim()))
        };
        let outcome = if let Some(f) = child("failure").or_else(|| child("error")) {
            let m = message(f);
            Outcome::Failed(if m.is_empty() {
                text("failure")
                    .or_else(|| text("error"))
                    .unwrap_or_default()
            } else {
                m
            })
        } else if let Some(s) = child("skipped") {
            Outcome::Skipped(message(s).trim().replace("skipped - ", ""))
        } else if attribute(&head, "status").as_deref() == Some("pending") {
            Outcome::Pending
        } else {
            Outcome::Passed
        };
        let seconds = attribute(&head, "time")
            .and_then(|t| t.parse().ok())
            .unwrap_or(0.0);
        cases.push(Case {
            name,
            outcome,
            seconds,
        });
    }
    cases
}

/// How many cases were skipped for each reason (the first 120 characters
/// of it); pending cases count under "pending".
pub fn skipped_by_reason(cases: &[Case]) -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    for c in cases {
        let why = match &c.outcome {
            Outcome::Skipped(why) => why.chars().take(120).collect(),
            Outcome::Pending => "pending".to_string(),
            _ => continue,
        };
        *by.entry(why).or_insert(0) += 1;
    }
    by
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_read() {
        let xml = r#"<testsuites><testsuite name="x">
  <testcase name="[It] one &quot;a&quot;" classname="x" status="passed" time="1.5"></testcase>
  <testcase name="[It] two" classname="x" status="failed" time="2"><failure message="boom &amp; more" type="failed">x</failure></testcase>
  <testcase name="[It] three" classname="x" status="skipped" time="0"><skipped message="skipped - not &#39;here&#39;"></skipped></testcase>
  <testcase name="[It] four" classname="x" status="pending" time="0"></testcase>
  <testcase name="[It] five" classname="x" status="failed" time="1"><failure message="" type="failed">
    [FAILED] it broke &lt;here&gt;
  </failure></testcase>
</testsuite></testsuites>"#;
        let c = cases(xml);
        assert_eq!(c.len(), 5);
        assert_eq!(c[0].name, "one \"a\"");
        assert_eq!((c[0].outcome.clone(), c[0].seconds), (Outcome::Passed, 1.5));
        assert_eq!(c[1].outcome, Outcome::Failed("boom & more".into()));
        assert_eq!(c[2].outcome, Outcome::Skipped("not 'here'".into()));
        assert_eq!(c[3].outcome, Outcome::Pending);
        assert_eq!(
            c[4].outcome,
            Outcome::Failed("[FAILED] it broke <here>".into())
        );
        let by = skipped_by_reason(&c);
        assert_eq!(by.get("not 'here'"), Some(&1));
        assert_eq!(by.get("pending"), Some(&1));
    }
}
