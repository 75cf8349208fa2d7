//! `wstap replay --junit`: play-throughs as a JUnit XML report, the format CI systems
//! (GitLab, Jenkins, GitHub's test reporters) read: a test suite per session, a test case
//! per message compared (its verdict, with the difference when it failed), and one for
//! the handshake; a session that could not be played is an error.

use std::fmt::Write;
use std::time::Duration;

use wstap_replay::{PlayError, Report, Session, Step};

/// One session's play-through.
pub struct Played<'a> {
    pub session: &'a Session,
    pub result: Result<Report, PlayError>,
    pub took: Duration,
}

/// The report, as XML.
pub fn report(played: &[Played<'_>], target: &str) -> String {
    let mut suites = String::new();
    let (mut tests, mut failures, mut errors) = (0, 0, 0);
    for p in played {
        let s = p.session;
        // The path as a capture shows it: credentials in its query redacted.
        let path = crate::pick::redacted_target(&s.path);
        let name = format!("session {}: {} {path}", s.id, s.method);
        let cases: Vec<(String, Option<(&str, String)>)> = match &p.result {
            Ok(report) => cases(report),
            Err(e) => vec![("play".to_string(), Some(("error", format!("{e:#}"))))],
        };
        let failed = cases.iter().filter(|(_, f)| f.as_ref().is_some_and(|(k, _)| *k == "failure")).count();
        let errored = cases.iter().filter(|(_, f)| f.as_ref().is_some_and(|(k, _)| *k == "error")).count();
        (tests, failures, errors) = (tests + cases.len(), failures + failed, errors + errored);
        let _ = writeln!(
            suites,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failed}\" errors=\"{errored}\" time=\"{:.3}\">",
            escape(&name),
            cases.len(),
            p.took.as_secs_f64()
        );
        let _ =
            writeln!(suites, "    <properties><property name=\"target\" value=\"{}\"/></properties>", escape(target));
        for (case, outcome) in &cases {
            let class = escape(&format!("wstap.replay.session{}", s.id));
            match outcome {
                None => {
                    let _ = writeln!(suites, "    <testcase classname=\"{class}\" name=\"{}\"/>", escape(case));
                }
                Some((kind, text)) => {
                    let first = text.lines().next().unwrap_or_default();
                    let _ = writeln!(
                        suites,
                        "    <testcase classname=\"{class}\" name=\"{}\">\n      <{kind} message=\"{}\">{}</{kind}>\n    </testcase>",
                        escape(case),
                        escape(first),
                        escape(text)
                    );
                }
            }
        }
        suites.push_str("  </testsuite>\n");
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"wstap replay\" tests=\"{tests}\" \
         failures=\"{failures}\" errors=\"{errors}\">\n{suites}</testsuites>\n"
    )
}

/// The test cases of a play-through: each step that compared something, named after the
/// recorded message, with its failure.
fn cases(report: &Report) -> Vec<(String, Option<(&'static str, String)>)> {
    let mut cases = vec![("handshake".to_string(), None)];
    for step in &report.steps {
        let case = match step {
            Step::Sent { .. } | Step::Received { .. } => continue,
            Step::Matched { index, kind, len } => (format!("#{index} {} ({len} B)", kind.name()), None),
            Step::Different { index, expected, .. } | Step::Missing { index, expected } => {
                (format!("#{index} {} ({} B)", expected.kind.name(), expected.data.len()), Some(step.to_string()))
            }
            Step::Extra { got } => {
                (format!("extra {} ({} B)", got.kind.name(), got.data.len()), Some(step.to_string()))
            }
            Step::Handshake(_) => {
                cases[0].1 = Some(("failure", step.to_string()));
                continue;
            }
        };
        cases.push((case.0, case.1.map(|t| ("failure", t))));
    }
    cases
}

/// `text` fit for XML attributes and content: markup escaped, and the control characters
/// XML 1.0 forbids replaced.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' | '\t' => out.push(c),
            // What XML 1.0 does not allow: control characters, U+FFFE and U+FFFF.
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_and_control_characters_are_escaped() {
        assert_eq!(
            escape("a<b>&\"c'\u{1}\n\u{fffe}\u{ffff}"),
            "a&lt;b&gt;&amp;&quot;c&apos;\u{fffd}\n\u{fffd}\u{fffd}"
        );
    }
}
