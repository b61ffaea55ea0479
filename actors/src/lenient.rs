//! ThingsBoard parses device JSON with Gson in lenient mode, so it stores payloads that strict
//! JSON refuses: the reference's own `mosquitto_pub -m "{"temperature":42}"` reaches the server
//! as `{temperature:42}` once the shell has eaten the inner quotes. [`to_strict`] rewrites such a
//! payload into strict JSON, which the payload parser then reads as usual; it runs only after
//! strict parsing failed, so well-formed payloads never pay for it.
//!
//! What Gson's lenient reader takes and this rewrites: unquoted names and values (a value that
//! reads as a JSON number, `true`, `false` or `null` keeps that type, anything else becomes a
//! string), single-quoted strings, `;` between members or elements, `=` and `=>` between a name
//! and its value, and `//`, `#` and `/* */` comments. Only an object or array at the top is
//! rewritten; the output is never longer than twice the input plus two bytes per literal.

/// The strict JSON form of a lenient object or array; `None` when `input` does not start with
/// `{` or `[`, or has an unterminated string or comment. Whether the result is valid JSON is
/// for the strict parser to decide.
pub fn to_strict(input: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(input).ok()?;
    let first = text.trim_start().chars().next()?;
    if first != '{' && first != '[' {
        return None;
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '{' | '}' | '[' | ']' | ',' | ':' => out.push(c),
            ';' => out.push(','),
            '=' => {
                if chars.peek().is_some_and(|(_, n)| *n == '>') {
                    chars.next();
                }
                out.push(':');
            }
            c if c.is_whitespace() => out.push(c),
            '#' => skip_line(&mut chars),
            '/' if chars.peek().is_some_and(|(_, n)| *n == '/') => skip_line(&mut chars),
            '/' if chars.peek().is_some_and(|(_, n)| *n == '*') => {
                chars.next();
                let mut last = ' ';
                loop {
                    let (_, n) = chars.next()?;
                    if last == '*' && n == '/' {
                        break;
                    }
                    last = n;
                }
            }
            '"' => {
                out.push('"');
                loop {
                    let (_, n) = chars.next()?;
                    out.push(n);
                    match n {
                        '\\' => out.push(chars.next()?.1),
                        '"' => break,
                        _ => {}
                    }
                }
            }
            '\'' => {
                let mut value = String::new();
                loop {
                    let (_, n) = chars.next()?;
                    match n {
                        '\\' => {
                            let (_, escaped) = chars.next()?;
                            // Keep JSON escapes; `\'` is a plain quote.
                            if escaped != '\'' {
                                value.push('\\');
                            }
                            value.push(escaped);
                        }
                        '\'' => break,
                        '"' => value.push_str("\\\""),
                        n => value.push(n),
                    }
                }
                out.push('"');
                out.push_str(&value);
                out.push('"');
            }
            _ => {
                let mut end = i + c.len_utf8();
                while let Some(&(j, n)) = chars.peek() {
                    if is_delimiter(n) {
                        break;
                    }
                    end = j + n.len_utf8();
                    chars.next();
                }
                push_literal(&mut out, &text[i..end]);
            }
        }
    }
    Some(out)
}

/// Characters that end an unquoted literal (Gson's `isLiteral` reversed).
fn is_delimiter(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '{' | '}' | '[' | ']' | ',' | ':' | ';' | '=' | '#' | '/' | '\\' | '"' | '\''
        )
}

fn skip_line(chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>) {
    for (_, n) in chars.by_ref() {
        if n == '\n' || n == '\r' {
            break;
        }
    }
}

/// An unquoted literal: itself when JSON reads it as a number or keyword, else a string.
fn push_literal(out: &mut String, literal: &str) {
    let keeps_type = matches!(literal, "true" | "false" | "null")
        || serde_json::from_str::<serde_json::Number>(literal).is_ok();
    if keeps_type {
        out.push_str(literal);
    } else {
        // Serialising a &str cannot fail.
        out.push_str(&serde_json::to_string(literal).unwrap_or_default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_payloads_become_strict_json() {
        let cases: &[(&str, &str)] = &[
            // The reference's mosquitto_pub line after the shell: `-m "{"temperature":42}"`.
            ("{temperature:42}", r#"{"temperature":42}"#),
            (
                "{temperature:42.5,on:true,none:null}",
                r#"{"temperature":42.5,"on":true,"none":null}"#,
            ),
            ("{mode:eco}", r#"{"mode":"eco"}"#),
            ("{'mode':'eco \"x\"'}", r#"{"mode":"eco \"x\""}"#),
            ("{a=1;b=>2}", r#"{"a":1,"b":2}"#),
            ("[{ts:1,values:{a:1}}]", r#"[{"ts":1,"values":{"a":1}}]"#),
            (
                "{a:1 // one\n,b:2 # two\n,c:/* three */3}",
                "{\"a\":1 ,\"b\":2 ,\"c\":3}",
            ),
            (
                "{\"quoted\":\"kept\",bare:-1.5e3}",
                r#"{"quoted":"kept","bare":-1.5e3}"#,
            ),
            ("{fw:v1.2.3}", r#"{"fw":"v1.2.3"}"#),
            ("{ключ:значение}", r#"{"ключ":"значение"}"#),
        ];
        for (lenient, strict) in cases {
            assert_eq!(
                to_strict(lenient.as_bytes()).as_deref(),
                Some(*strict),
                "{lenient}"
            );
            let parsed: Result<serde_json::Value, _> = serde_json::from_str(strict);
            assert!(parsed.is_ok(), "{strict}");
        }
    }

    #[test]
    fn what_is_not_rewritten() {
        // Not an object or array at the top; unterminated strings and comments.
        for input in [
            "hello",
            "42",
            "",
            "  ",
            "{a:'open",
            "{\"open",
            "{a:1 /* open",
        ] {
            assert_eq!(to_strict(input.as_bytes()), None, "{input:?}");
        }
        assert_eq!(to_strict(&[b'{', 0xff, b'}']), None);
        // Rewritten, but still not JSON: the strict parser refuses it afterwards.
        for input in ["{broken", "{a:1", "{a::1}"] {
            let strict = to_strict(input.as_bytes()).unwrap_or_default();
            assert!(
                serde_json::from_str::<serde_json::Value>(&strict).is_err(),
                "{input}"
            );
        }
    }
}
