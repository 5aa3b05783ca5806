//! Environment interpolation of the config text, before it is parsed as TOML.
//!
//! `${NAME}` is replaced by the variable's value, `${NAME:-default}` by the value or, when the
//! variable is unset or empty, by `default`; `$$` is a literal `$` and any other `$` stays as
//! it is. Replacements happen within a line and a value may not contain a line break, so line
//! numbers of the result are those of the file the user wrote. Comments are left alone: a
//! commented-out line that names an unset variable is not an error. To know where comments
//! are, this module follows TOML's string syntax (basic, literal and multi-line strings) and
//! nothing else.

use super::ConfigError;

/// Where the scanner is in TOML's lexical grammar.
#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Normal,
    Comment,
    /// `"..."`
    Basic,
    /// `'...'`
    Literal,
    /// `"""..."""`
    MultiBasic,
    /// `'''...'''`
    MultiLiteral,
}

/// `text` with every `${...}` and `$$` outside comments replaced; `env` looks a variable up.
pub(super) fn interpolate(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, ConfigError> {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut state = State::Normal;
    let mut line = 1;
    // `text[copied..i]` has been scanned but not yet copied to `out`. Every byte the scanner
    // acts on is ASCII, so slicing at these offsets never splits a character.
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'\n' {
            line += 1;
            if matches!(state, State::Comment | State::Basic | State::Literal) {
                state = State::Normal;
            }
            i += 1;
            continue;
        }
        match (state, b) {
            (State::Comment, _) => i += 1,
            (State::Normal, b'#') => {
                state = State::Comment;
                i += 1;
            }
            (State::Normal, b'"') if bytes[i..].starts_with(b"\"\"\"") => {
                state = State::MultiBasic;
                i += 3;
            }
            (State::Normal, b'"') => {
                state = State::Basic;
                i += 1;
            }
            (State::Normal, b'\'') if bytes[i..].starts_with(b"'''") => {
                state = State::MultiLiteral;
                i += 3;
            }
            (State::Normal, b'\'') => {
                state = State::Literal;
                i += 1;
            }
            // An escape: skip the escaped character (it may be a quote), but never a line break,
            // which must still be counted.
            (State::Basic | State::MultiBasic, b'\\') => {
                i += if bytes.get(i + 1).is_some_and(|&c| c != b'\n') { 2 } else { 1 };
            }
            (State::Basic, b'"') | (State::Literal, b'\'') => {
                state = State::Normal;
                i += 1;
            }
            (State::MultiBasic, b'"') | (State::MultiLiteral, b'\'') => {
                // A closing delimiter may carry up to two quotes of content before it.
                let run = bytes[i..].iter().take_while(|&&c| c == b).count();
                if run >= 3 {
                    state = State::Normal;
                    i += run.min(5);
                } else {
                    i += run;
                }
            }
            (_, b'$') => {
                let (replacement, consumed) = match bytes.get(i + 1) {
                    Some(b'$') => ("$".to_owned(), 2),
                    Some(b'{') => expand(&text[i..], line, env)?,
                    _ => {
                        i += 1;
                        continue;
                    }
                };
                out.push_str(&text[copied..i]);
                out.push_str(&replacement);
                i += consumed;
                copied = i;
            }
            _ => i += 1,
        }
    }
    out.push_str(&text[copied..]);
    Ok(out)
}

/// Expands the `${...}` at the start of `text`: the replacement and the bytes it replaces.
fn expand(
    text: &str,
    line: usize,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, usize), ConfigError> {
    let error = |message: String| ConfigError::Line { line, message };
    let rest = &text[2..];
    let end = rest.find(['}', '\n']).filter(|&end| rest.as_bytes()[end] == b'}');
    let Some(end) = end else {
        return Err(error("unterminated \"${\": expected \"}\" on the same line".to_owned()));
    };
    let inner = &rest[..end];
    let (name, default) = match inner.split_once(":-") {
        Some((name, default)) => (name, Some(default)),
        None => (inner, None),
    };
    if !is_variable_name(name) {
        return Err(error(format!(
            "invalid variable reference \"${{{inner}}}\": expected ${{NAME}} or ${{NAME:-default}}"
        )));
    }
    let value = match (env(name), default) {
        (Some(value), Some(default)) if value.is_empty() => default.to_owned(),
        (Some(value), _) => value,
        (None, Some(default)) => default.to_owned(),
        (None, None) => return Err(error(format!("environment variable \"{name}\" is not set"))),
    };
    if value.contains(['\n', '\r']) {
        return Err(error(format!("environment variable \"{name}\" contains a line break")));
    }
    Ok((value, 2 + end + 1))
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOME_DIR" => Some("/home/w".to_owned()),
            "EMPTY" => Some(String::new()),
            "MULTI" => Some("a\nb".to_owned()),
            _ => None,
        }
    }

    fn run(text: &str) -> Result<String, String> {
        interpolate(text, &env).map_err(|e| e.to_string())
    }

    #[test]
    fn replaces_variables_and_defaults() {
        assert_eq!(run("a = \"${HOME_DIR}/x\"\n").unwrap(), "a = \"/home/w/x\"\n");
        assert_eq!(run("n = ${N:-42}").unwrap(), "n = 42");
        assert_eq!(run("n = ${HOME_DIR:-42}").unwrap(), "n = /home/w");
        assert_eq!(run("e = \"${EMPTY}\" f = \"${EMPTY:-d}\"").unwrap(), "e = \"\" f = \"d\"");
        assert_eq!(run("d = \"${N:-}\"").unwrap(), "d = \"\"");
    }

    #[test]
    fn dollars() {
        assert_eq!(run("a = \"$$HOME_DIR\"").unwrap(), "a = \"$HOME_DIR\"");
        assert_eq!(run("a = \"5$ $x\"").unwrap(), "a = \"5$ $x\"");
        assert_eq!(run("a = '$${X}'").unwrap(), "a = '${X}'");
    }

    #[test]
    fn comments_are_left_alone() {
        let text = "# path = \"${UNSET}\" $$\na = 1 # ${UNSET}\nb = \"#${HOME_DIR}\"\n";
        assert_eq!(run(text).unwrap(), "# path = \"${UNSET}\" $$\na = 1 # ${UNSET}\nb = \"#/home/w\"\n");
    }

    #[test]
    fn strings_with_quotes_and_hashes_do_not_start_comments() {
        let text =
            "a = \"x\\\"# ${HOME_DIR}\"\nb = '''it's # ${HOME_DIR}'''\nc = \"\"\"\n#${HOME_DIR}\n\"\"\"";
        let want = "a = \"x\\\"# /home/w\"\nb = '''it's # /home/w'''\nc = \"\"\"\n#/home/w\n\"\"\"";
        assert_eq!(run(text).unwrap(), want);
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(
            run("a = 1\n\nb = \"${OUT}\"").unwrap_err(),
            "config: line 3: environment variable \"OUT\" is not set"
        );
        assert_eq!(
            run("a = \"${OUT\"\n}").unwrap_err(),
            "config: line 1: unterminated \"${\": expected \"}\" on the same line"
        );
        assert_eq!(
            run("a = \"${1X}\"").unwrap_err(),
            "config: line 1: invalid variable reference \"${1X}\": expected ${NAME} or ${NAME:-default}"
        );
        assert_eq!(
            run("\na = \"${MULTI}\"").unwrap_err(),
            "config: line 2: environment variable \"MULTI\" contains a line break"
        );
    }

    #[test]
    fn keeps_non_ascii_text() {
        assert_eq!(run("a = \"é${HOME_DIR}ü\" # ☃ ${X}").unwrap(), "a = \"é/home/wü\" # ☃ ${X}");
    }
}
