//! `kubeedge-frame`: inspect KubeEdge messages, one JSON message per line on stdin.
//!
//! ```text
//! kubeedge-frame reencode [--max-len BYTES]   re-encode each line (byte-identical for KubeEdge's own output)
//! kubeedge-frame show     [--max-len BYTES]   pretty-print each message with its typed route and resource
//! kubeedge-frame check    [--max-len BYTES]   exit 1 at the first invalid line, naming the line and reason
//! ```
//!
//! A line is one message as gorilla's `WriteJSON` writes it to a WebSocket frame (the trailing
//! newline is the line end). Lines longer than `--max-len` (default 8 MiB) are refused without
//! being buffered whole. Exit status: 0 when every line was valid, 1 at invalid input, 2 on a
//! usage error.

use std::io::{self, BufRead, BufWriter, Read, Write};
use std::process::ExitCode;

use bytes::Bytes;
use kubeedge_proto::{ContentKind, DEFAULT_MAX_MESSAGE_LEN, Message, Resource};

/// Reads KubeEdge messages, one JSON message per line on stdin.
#[derive(clap::Parser)]
#[command(name = "kubeedge-frame")]
struct Cli {
    #[arg(value_enum)]
    command: Command,
    /// The longest message accepted, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_MESSAGE_LEN)]
    max_len: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Command {
    /// Write each message re-encoded on one line.
    Reencode,
    /// Pretty-print each message with its typed operation and resource path.
    Show,
    /// Exit non-zero at the first invalid line, naming the line and the reason.
    Check,
}

/// A line of input that is not a valid message.
struct Invalid {
    line: u64,
    reason: String,
}

fn main() -> ExitCode {
    let Cli { command, max_len } = clap::Parser::parse();
    let stdin = io::stdin().lock();
    let stdout = BufWriter::new(io::stdout().lock());
    match run(command, max_len, stdin, stdout) {
        Ok(Summary {
            lines,
            invalid: None,
        }) => {
            if command == Command::Check {
                eprintln!("kubeedge-frame: {lines} valid messages");
            }
            ExitCode::SUCCESS
        }
        Ok(Summary {
            invalid: Some(bad), ..
        }) => {
            // reencode and show already reported every bad line as they went.
            if command == Command::Check || bad.reason.starts_with("line longer") {
                eprintln!("kubeedge-frame: line {}: {}", bad.line, bad.reason);
            }
            ExitCode::from(1)
        }
        // A closed stdout (e.g. `| head`) ends the run quietly.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kubeedge-frame: {e}");
            ExitCode::from(1)
        }
    }
}

struct Summary {
    lines: u64,
    invalid: Option<Invalid>,
}

fn run(
    command: Command,
    max_len: usize,
    input: impl BufRead,
    mut out: impl Write,
) -> io::Result<Summary> {
    let mut input = input;
    let mut line = Vec::new();
    let mut number = 0u64;
    let mut first_invalid = None;
    loop {
        line.clear();
        // Read at most max_len bytes plus "\r\n": a longer line is refused, not buffered.
        let limit = u64::try_from(max_len).unwrap_or(u64::MAX).saturating_add(2);
        let n = input.by_ref().take(limit).read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        number += 1;
        let terminated = line.last() == Some(&b'\n');
        if !terminated && n as u64 == limit {
            let reason = format!("line longer than the limit of {max_len} bytes");
            out.flush()?;
            return Ok(Summary {
                lines: number,
                invalid: Some(Invalid {
                    line: number,
                    reason,
                }),
            });
        }
        let body = trim_line_end(&line);
        if body.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match decode(body, max_len) {
            Ok(msg) => match command {
                Command::Reencode => {
                    out.write_all(&msg.to_json())?;
                    out.write_all(b"\n")?;
                }
                Command::Show => show(&mut out, number, &msg)?,
                Command::Check => {}
            },
            Err(reason) => {
                let bad = Invalid {
                    line: number,
                    reason,
                };
                if command == Command::Check {
                    return Ok(Summary {
                        lines: number,
                        invalid: Some(bad),
                    });
                }
                // reencode and show report each bad line and go on; the exit status is 1.
                out.flush()?;
                eprintln!("kubeedge-frame: line {}: {}", bad.line, bad.reason);
                first_invalid.get_or_insert(bad);
            }
        }
    }
    out.flush()?;
    Ok(Summary {
        lines: number,
        invalid: first_invalid,
    })
}

/// Decodes one line and checks that its resource has one of KubeEdge's shapes.
fn decode(body: &[u8], max_len: usize) -> Result<Message, String> {
    let msg =
        Message::decode_json(Bytes::copy_from_slice(body), max_len).map_err(|e| e.to_string())?;
    // edgecore's zero-value shutdown message is real KubeEdge traffic with no resource.
    if !msg.is_empty_shutdown() {
        msg.resource().map_err(|e| e.to_string())?;
    }
    Ok(msg)
}

fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn show(out: &mut impl Write, number: u64, msg: &Message) -> io::Result<()> {
    let h = &msg.header;
    writeln!(out, "#{number} {}", msg.route)?;
    write!(
        out,
        "  msg_id {:?}  timestamp {} ({})",
        h.id,
        h.timestamp,
        kubeedge_proto::rfc3339_utc(h.timestamp, true)
    )?;
    if !h.parent_id.is_empty() {
        write!(out, "  parent {:?}", h.parent_id)?;
    }
    if !h.resource_version.is_empty() {
        write!(out, "  resourceversion {:?}", h.resource_version)?;
    }
    if h.sync {
        write!(out, "  sync")?;
    }
    if !h.message_type.is_empty() {
        write!(out, "  type {:?}", h.message_type)?;
    }
    writeln!(out)?;
    let resource = if msg.is_empty_shutdown() {
        "none (edgecore's empty shutdown message)".to_owned()
    } else {
        match msg.resource() {
            Ok(res) => describe(&res),
            Err(e) => format!("invalid: {e}"),
        }
    };
    writeln!(out, "  resource {resource}")?;
    let kind = msg.content.kind();
    let len = msg.content.as_json().len();
    let mut flags = Vec::new();
    if msg.is_ack() {
        flags.push("ack");
    }
    if msg.is_keepalive() {
        flags.push("keepalive");
    }
    writeln!(
        out,
        "  content {kind:?}, {len} bytes{}",
        if flags.is_empty() {
            String::new()
        } else {
            format!(" ({})", flags.join(", "))
        }
    )?;
    match kind {
        ContentKind::Null => {}
        ContentKind::String => {
            let text = msg.content.as_str().unwrap_or_default();
            // A JSON document inside a string is shown parsed.
            match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(doc @ (serde_json::Value::Object(_) | serde_json::Value::Array(_))) => {
                    writeln!(out, "  (JSON inside a string)")?;
                    pretty(out, &doc)?;
                }
                _ => writeln!(out, "  {text:?}")?,
            }
        }
        _ => match serde_json::from_slice::<serde_json::Value>(msg.content.as_json()) {
            Ok(doc) => pretty(out, &doc)?,
            Err(e) => writeln!(out, "  (content not decodable: {e})")?,
        },
    }
    writeln!(out)
}

fn pretty(out: &mut impl Write, doc: &serde_json::Value) -> io::Result<()> {
    let text = serde_json::to_string_pretty(doc).map_err(io::Error::other)?;
    for line in text.lines() {
        writeln!(out, "    {line}")?;
    }
    Ok(())
}

fn describe(resource: &Resource) -> String {
    match resource {
        Resource::Object(obj) => format!(
            "object namespace={} type={} name={}",
            obj.namespace,
            obj.resource_type,
            obj.name.as_deref().unwrap_or("(list)")
        ),
        Resource::Device { id, event } => format!("device {id} event={}", event.as_str()),
        Resource::Topic(topic) => format!("topic {topic:?}"),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_on(command: Command, input: &str, max_len: usize) -> (String, Summary) {
        let mut out = Vec::new();
        let summary = run(command, max_len, input.as_bytes(), &mut out).unwrap();
        (String::from_utf8(out).unwrap(), summary)
    }

    #[test]
    fn reencode_is_identity_on_kubeedge_output() {
        let input = concat!(
            r#"{"header":{"msg_id":"a","timestamp":1795408165616},"route":{"source":"websocket","group":"resource","operation":"keepalive","resource":"node"},"content":"ping"}"#,
            "\n",
            r#"{"header":{"msg_id":"","timestamp":0},"route":{},"content":null}"#,
            "\n"
        );
        let (out, summary) = run_on(Command::Reencode, input, 1 << 20);
        assert_eq!(out, input);
        assert!(summary.invalid.is_none());
    }

    #[test]
    fn check_names_the_first_bad_line() {
        let good = r#"{"header":{"msg_id":"a","timestamp":1},"route":{"resource":"default/pod/x"},"content":null}"#;
        let bad_resource = r#"{"header":{"msg_id":"b","timestamp":1},"route":{"resource":"default//x"},"content":null}"#;
        let input = format!("{good}\n\n{bad_resource}\n{{\n");
        let (_, summary) = run_on(Command::Check, &input, 1 << 20);
        let bad = summary.invalid.unwrap();
        assert_eq!(bad.line, 3);
        assert!(bad.reason.contains("default//x"), "{}", bad.reason);
    }

    #[test]
    fn overlong_lines_are_refused() {
        let (_, summary) = run_on(Command::Check, &"x".repeat(100), 10);
        assert!(summary.invalid.unwrap().reason.contains("longer than"));
    }

    #[test]
    fn show_mentions_typed_fields() {
        let input = r#"{"header":{"msg_id":"m","timestamp":1795408208347,"resourceversion":"247"},"route":{"source":"edgecontroller","group":"resource","operation":"insert","resource":"default/pod/pod-demo"},"content":{"kind":"Pod"}}"#;
        let (out, _) = run_on(Command::Show, input, 1 << 20);
        assert!(
            out.contains("edgecontroller/resource insert default/pod/pod-demo"),
            "{out}"
        );
        assert!(
            out.contains("object namespace=default type=pod name=pod-demo"),
            "{out}"
        );
        assert!(out.contains("2026-11-23T04:30:08.347Z"), "{out}");
        assert!(out.contains("resourceversion \"247\""), "{out}");
    }
}
