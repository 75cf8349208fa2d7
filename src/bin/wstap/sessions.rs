//! The `sessions` command: each session of the captures as a line of a table or of JSON,
//! printed as soon as its connection ends, and with `--messages` each of its messages.
//! Exit codes: 0 listed cleanly, 1 the files had problems, 2 error.

use std::collections::HashMap;
use std::io::Write;
use std::process::ExitCode;

use wstap_replay::{preview, Dir, Event, FilterTally, Kind, Message, Session, SessionId, Tally};

use crate::pick::{fail, report_problems, Pick, MATCHED, MISMATCH};

pub fn utc(t: wstap_wire::Timestamp) -> String {
    humantime::format_rfc3339_micros(t.to_system_time()).to_string()
}

/// A session's line of the table: every column at its width, whatever the addresses
/// (IPv6) and the path; what does not fit is cut with `…` (`--json` has it whole).
fn session_line(s: &Session, t: &Tally) -> String {
    format!(
        "{:<4} {:<27} {:<47} {:<24} {:>5} {:>5}  {}{}",
        s.id,
        utc(s.start),
        endpoints(s),
        fit(&s.path, 24, Cut::End),
        t.messages[Dir::Up],
        t.messages[Dir::Down],
        close_codes(t),
        if s.problems.is_empty() { "" } else { "  (damaged)" }
    )
}

/// `client → server` in the table's 47 columns: each address cut in its middle when the
/// two do not fit, so that both ports stay.
fn endpoints(s: &Session) -> String {
    let (client, server) = (s.client.to_string(), s.server.to_string());
    let whole = format!("{client} → {server}");
    if whole.chars().count() <= 47 {
        return whole;
    }
    format!("{} → {}", fit(&client, 22, Cut::Middle), fit(&server, 22, Cut::Middle))
}

/// Where [`fit`] cuts.
#[derive(Clone, Copy)]
enum Cut {
    /// In the middle: both ends kept (addresses and their ports).
    Middle,
    /// At the end: the start kept (a path).
    End,
}

/// `text` in at most `width` characters, cut with `…` where `cut` says.
fn fit(text: &str, width: usize, cut: Cut) -> String {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= width {
        return text.to_owned();
    }
    let (head, tail) = match cut {
        Cut::End => (width - 1, 0),
        Cut::Middle => ((width - 1) / 2, width - 1 - (width - 1) / 2),
    };
    let mut out: String = chars[..head].iter().collect();
    out.push('…');
    out.extend(&chars[chars.len() - tail..]);
    out
}

fn close_codes(t: &Tally) -> String {
    let code = |who: Dir| t.close[who].map_or("-".to_string(), |c| c.to_string());
    format!("{}/{}", code(Dir::Up), code(Dir::Down))
}

/// What every JSON form of a message says (`sessions --json`, `export --format jsonl`):
/// its session and place, time, sender, kind, size, whether bytes of it are missing, what
/// rides on it, and for a gap the bytes lost. Its payload is each form's own.
pub fn message_fields(s: &Session, index: usize, m: &Message) -> serde_json::Value {
    let mut v = serde_json::json!({
        "session": s.id,
        "index": index,
        "time": utc(m.time),
        "sender": m.dir.sender(),
        "kind": m.kind,
        "size": m.data.len(),
        "incomplete": m.incomplete,
    });
    if let Some(p) = s.response_header("sec-websocket-protocol").filter(|_| matches!(m.kind, Kind::Text | Kind::Binary))
    {
        v["subprotocol"] = p.trim().into();
    }
    if m.kind == Kind::Gap {
        v["lost"] = m.lost.into();
    }
    v
}

fn message_json(s: &Session, index: usize, m: &Message) -> serde_json::Value {
    let mut v = message_fields(s, index, m);
    v["type"] = "message".into();
    v["frames"] = m.frames.into();
    v["compressed"] = m.compressed.into();
    if m.kind == Kind::Gap {
        return v;
    }
    match std::str::from_utf8(&m.data) {
        Ok(t) if m.kind != Kind::Binary => v["text"] = t.into(),
        _ => v["hex"] = m.data.iter().map(|b| format!("{b:02x}")).collect::<String>().into(),
    }
    v
}

fn session_json(s: &Session, t: &Tally) -> serde_json::Value {
    let mut v = serde_json::to_value(s).unwrap_or_default();
    v["type"] = "session".into();
    v["time"] = utc(s.start).into();
    v["messages_client"] = t.messages[Dir::Up].into();
    v["messages_server"] = t.messages[Dir::Down].into();
    v["close_client"] = t.close[Dir::Up].into();
    v["close_server"] = t.close[Dir::Down].into();
    v
}

/// What `wstap sessions` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// One line per session.
    Sessions,
    /// Each session, then each of its messages (`--messages`).
    Messages,
}

/// How `wstap sessions` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// An aligned table for people.
    Table,
    /// JSON lines (`--json`).
    Json,
}

/// `wstap sessions`: each session the filters take, printed as soon as its connection
/// ends. The listing alone keeps no message (each is counted as it streams by);
/// `--messages` holds a session's messages until it ends, to print them under it.
pub fn sessions(pick: &Pick, listing: Listing, format: Format) -> ExitCode {
    let stream = match crate::pick::stream(pick) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let filter = pick.filters.filter();
    let mut out = std::io::stdout().lock();
    let mut print = |line: String| writeln!(out, "{line}").and_then(|()| out.flush()).is_ok();
    if format == Format::Table {
        print(format!(
            "{:<4} {:<27} {:<47} {:<24} {:>5} {:>5}  CLOSE(C/S)",
            "ID", "START (UTC)", "CLIENT → SERVER", "PATH", "C→S", "S→C"
        ));
    }
    let mut line = |s: &Session, t: &Tally| match format {
        Format::Json => print(session_json(s, t).to_string()),
        Format::Table => print(session_line(s, t)),
    };
    let rec = match listing {
        Listing::Sessions => {
            let mut events = stream.into_events();
            // The sessions open whose opening the filters take, and what their messages say.
            let mut open: HashMap<SessionId, (Tally, FilterTally<'_>)> = HashMap::new();
            for e in events.by_ref() {
                match e {
                    Event::Opened(s) if filter.admits_opening(&s) => {
                        open.insert(s.id, (Tally::default(), filter.tally()));
                    }
                    Event::Opened(_) => {}
                    Event::Message(id, m) => {
                        if let Some((t, f)) = open.get_mut(&id) {
                            t.add(&m);
                            f.add(&m);
                        }
                    }
                    Event::Closed(s) => {
                        let Some((t, f)) = open.remove(&s.id) else { continue };
                        if f.admits(s.start) && !line(&s, &t) {
                            return ExitCode::from(MATCHED); // stdout closed (a pager quit)
                        }
                    }
                }
            }
            events.into_recording()
        }
        Listing::Messages => {
            let mut sessions = stream;
            for s in sessions.by_ref().filter(|s| filter.admits(s)) {
                if !line(&s, &s.tally()) || !print_messages(&s, format) {
                    return ExitCode::from(MATCHED);
                }
            }
            sessions.into_recording()
        }
    };
    report_problems(&rec);
    ExitCode::from(if rec.problems.is_empty() { MATCHED } else { MISMATCH })
}

/// A session's messages under its line; false once stdout is closed.
fn print_messages(s: &Session, format: Format) -> bool {
    let mut out = std::io::stdout().lock();
    // Data messages are labelled with what rides on them: the subprotocol the 101 agreed.
    let label = match s.response_header("sec-websocket-protocol") {
        Some(p) => format!("[{}] ", p.trim()),
        None => String::new(),
    };
    for (i, m) in s.messages.iter().enumerate() {
        let line = if format == Format::Json {
            message_json(s, i + 1, m).to_string()
        } else if m.kind == wstap_replay::Kind::Gap {
            let when = m.time.since(s.start).as_secs_f64();
            format!("     #{:<5} +{when:.6}s  {}  gap    {:>8} B  not captured", i + 1, m.dir.arrow(), m.lost)
        } else {
            let label =
                if matches!(m.kind, wstap_replay::Kind::Text | wstap_replay::Kind::Binary) { &label[..] } else { "" };
            format!(
                "     #{:<5} +{:.6}s  {}  {:<6} {:>8} B  {label}{}{}",
                i + 1,
                m.time.since(s.start).as_secs_f64(),
                m.dir.arrow(),
                m.kind.name(),
                m.data.len(),
                preview(m.kind, &m.data, 60),
                if m.incomplete { "  (incomplete)" } else { "" }
            )
        };
        if writeln!(out, "{line}").is_err() {
            return false;
        }
    }
    out.flush().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(client: &str, server: &str, path: &str) -> Session {
        let start = wstap_wire::Timestamp::from_nanos(1_795_817_067_483_060_333);
        let id = wstap_replay::SessionId(12);
        Session { start, path: path.into(), ..Session::new(id, client.parse().unwrap(), server.parse().unwrap()) }
    }

    #[test]
    fn the_table_stays_aligned_with_ipv6_addresses_and_long_paths() {
        let none = Tally::default();
        let short = session_line(&session("127.0.0.1:4242", "127.0.0.1:80", "/ws"), &none);
        let long = session_line(
            &session(
                "[2001:db8:85a3:8d3:1319:8a2e:370:7348]:54321",
                "[2001:db8:85a3:8d3:1319:8a2e:370:7349]:443",
                "/very/long/path/to/the/socket?with=a&long=query&string=1",
            ),
            &none,
        );
        let at = |line: &str, column: &str| line.find(column).map(|i| line[..i].chars().count());
        assert_eq!(short.chars().count(), long.chars().count(), "\n{short}\n{long}");
        assert!(long.contains(" [2001:db8:…7348]:54321 → [2001:db8:…0:7349]:443 "), "both ports kept: {long}");
        assert!(long.contains("/very/long/path/to/the/… "), "the path's start kept: {long}");
        assert_eq!(at(&short, "    0     0  -/-"), at(&long, "    0     0  -/-"));
    }

    #[test]
    fn fit_cuts_only_what_does_not_fit() {
        assert_eq!(fit("abc", 3, Cut::End), "abc");
        assert_eq!(fit("abcdef", 4, Cut::End), "abc…");
        assert_eq!(fit("abcdef", 4, Cut::Middle), "a…ef");
        assert_eq!(fit("→→→→→", 3, Cut::Middle), "→…→");
    }
}
