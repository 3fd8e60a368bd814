//! Reading what the harness scripts print on stdout: `export KEY=value` lines whose values are
//! shell-quoted by bash's `printf %q` (`a\ b`, `''`, `$'a\nb'`), several assignments per line
//! allowed (`unpack.sh` prints `export PEERS_BIN=... PEERS_CRDS=...`).

use std::collections::HashMap;

/// The `KEY=value` assignments of every `export` line of `text`, unquoted as the shell would.
/// Blank lines and `#` comments are skipped; anything else is an error.
pub(crate) fn parse_exports(text: &str) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let words = split_words(trimmed).map_err(|e| format!("{e} in line {line:?}"))?;
        let mut words = words.into_iter();
        if words.next().as_deref() != Some("export") {
            return Err(format!("not an `export` line: {line:?}"));
        }
        for word in words {
            let (key, value) = word
                .split_once('=')
                .ok_or_else(|| format!("`{word}` is not KEY=value in line {line:?}"))?;
            out.insert(key.to_owned(), value.to_owned());
        }
    }
    Ok(out)
}

/// Splits one line into words the way the shell does (quote removal, backslash escapes,
/// `'...'`, `"..."` and ANSI-C `$'...'` quoting); no expansion of any kind.
pub(crate) fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Vec<u8> = Vec::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => {
                if in_word {
                    words.push(into_string(std::mem::take(&mut word))?);
                    in_word = false;
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('\n') | None => {}
                    Some(next) => push(&mut word, next),
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(inner) => push(&mut word, inner),
                        None => return Err("unterminated '...'".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(e @ ('$' | '`' | '"' | '\\')) => push(&mut word, e),
                            Some('\n') => {}
                            Some(other) => {
                                push(&mut word, '\\');
                                push(&mut word, other);
                            }
                            None => return Err("unterminated \"...\"".into()),
                        },
                        Some(inner) => push(&mut word, inner),
                        None => return Err("unterminated \"...\"".into()),
                    }
                }
            }
            '$' if chars.peek() == Some(&'\'') => {
                chars.next();
                in_word = true;
                ansi_c(&mut chars, &mut word)?;
            }
            other => {
                in_word = true;
                push(&mut word, other);
            }
        }
    }
    if in_word {
        words.push(into_string(word)?);
    }
    Ok(words)
}

fn push(word: &mut Vec<u8>, c: char) {
    let mut buf = [0u8; 4];
    word.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
}

fn into_string(bytes: Vec<u8>) -> Result<String, String> {
    String::from_utf8(bytes).map_err(|e| format!("a quoted value is not UTF-8 ({e})"))
}

/// The body of `$'...'` after the opening quote, up to and including the closing one.
fn ansi_c(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    word: &mut Vec<u8>,
) -> Result<(), String> {
    // up to `max` digits of `radix` (at least one), as a number
    fn digits(
        chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
        radix: u32,
        max: usize,
        first: Option<u32>,
    ) -> Option<u32> {
        let mut value = first;
        let mut n = usize::from(first.is_some());
        while n < max {
            match chars.peek().and_then(|c| c.to_digit(radix)) {
                Some(d) => {
                    value = Some(value.unwrap_or(0) * radix + d);
                    chars.next();
                    n += 1;
                }
                None => break,
            }
        }
        value
    }
    loop {
        match chars.next() {
            None => return Err("unterminated $'...'".into()),
            Some('\'') => return Ok(()),
            Some('\\') => {
                let Some(e) = chars.next() else {
                    return Err("unterminated $'...'".into());
                };
                match e {
                    'a' => word.push(0x07),
                    'b' => word.push(0x08),
                    'e' | 'E' => word.push(0x1b),
                    'f' => word.push(0x0c),
                    'n' => word.push(b'\n'),
                    'r' => word.push(b'\r'),
                    't' => word.push(b'\t'),
                    'v' => word.push(0x0b),
                    '\\' | '\'' | '"' | '?' => push(word, e),
                    '0'..='7' => {
                        let v = digits(chars, 8, 3, e.to_digit(8)).unwrap_or(0);
                        word.push((v & 0xff) as u8);
                    }
                    'x' => match digits(chars, 16, 2, None) {
                        Some(v) => word.push((v & 0xff) as u8),
                        None => word.extend_from_slice(b"\\x"),
                    },
                    'u' | 'U' => {
                        let max = if e == 'u' { 4 } else { 8 };
                        match digits(chars, 16, max, None).and_then(char::from_u32) {
                            Some(c) => push(word, c),
                            None => return Err(format!("bad \\{e} escape in $'...'")),
                        }
                    }
                    'c' => match chars.next() {
                        Some(c) if c.is_ascii() => word.push((c as u8) & 0x1f),
                        _ => return Err("bad \\c escape in $'...'".into()),
                    },
                    other => {
                        push(word, '\\');
                        push(word, other);
                    }
                }
            }
            Some(c) => push(word, c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> String {
        let map = parse_exports(line).unwrap();
        map["K"].clone()
    }

    /// The right-hand sides are what bash 5's `printf 'export K=%q\n'` prints.
    #[test]
    fn unquotes_what_printf_q_prints() {
        assert_eq!(one("export K=plain/path:1"), "plain/path:1");
        assert_eq!(one(r"export K=a\ b"), "a b");
        assert_eq!(one("export K=''"), "");
        assert_eq!(one(r"export K=it\'s"), "it's");
        assert_eq!(one(r"export K=$'line1\nline2'"), "line1\nline2");
        assert_eq!(one(r"export K=$'tab\tx'"), "tab\tx");
        assert_eq!(one(r"export K=é\ ü"), "é ü");
        assert_eq!(
            one(r#"export K=\$HOME\ \"q\"\ \`x\`\ \\back"#),
            r#"$HOME "q" `x` \back"#
        );
        assert_eq!(one(r"export K=\~user"), "~user");
        assert_eq!(one("export K=a=b"), "a=b");
        assert_eq!(one(r"export K=\#x"), "#x");
        assert_eq!(one(r"export K=\*\?\[\]"), "*?[]");
        assert_eq!(one(r"export K=$'\303\251\x41\u00fc'"), "éAü");
    }

    #[test]
    fn other_quoting_and_several_assignments_per_line() {
        let map = parse_exports(
            "export PEERS_BIN=/tmp/kubeedge-peers/bin PEERS_CRDS=/work/shared/peers/crds\n\
             \n# comment\n\
             export A='x y' B=\"q \\\"r\\\" \\$s \\z\" C=pre'mid'post\n",
        )
        .unwrap();
        assert_eq!(map["PEERS_BIN"], "/tmp/kubeedge-peers/bin");
        assert_eq!(map["PEERS_CRDS"], "/work/shared/peers/crds");
        assert_eq!(map["A"], "x y");
        assert_eq!(map["B"], "q \"r\" $s \\z");
        assert_eq!(map["C"], "premidpost");
    }

    #[test]
    fn rejects_what_is_not_an_export() {
        assert!(parse_exports("RUN_DIR=/tmp/x").is_err());
        assert!(parse_exports("export NOVALUE").is_err());
        assert!(parse_exports("export K='open").is_err());
        assert!(parse_exports("export K=$'open").is_err());
    }
}
