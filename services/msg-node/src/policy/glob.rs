//! Glob patterns for identities, addresses and resources.
//!
//! `*` matches any run of characters except `/`, `**` matches any run including `/`, `?` matches
//! one character except `/`, and `\` makes the next character literal. `*` stopping at `/` keeps
//! `hyperty://*/camera/*` from matching `hyperty://evil/x/camera/y`: a pattern only crosses path
//! segments where its author wrote `**`.
//!
//! Matching simulates the pattern as a small automaton (one pass over the text, a set of
//! positions in the pattern), so a hostile address cannot make it backtrack exponentially.

use std::fmt;

/// One element of a compiled pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    Literal(char),
    /// `?`
    One,
    /// `*`
    Segment,
    /// `**`
    Any,
}

/// A compiled glob pattern.
#[derive(Clone, PartialEq, Eq)]
pub struct Glob {
    source: String,
    matcher: Matcher,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Matcher {
    /// No wildcards: plain string equality.
    Exact(String),
    /// `prefix**`: a starts-with test (the common `hyperty://**`, `object://localhost/**`).
    Prefix(String),
    Tokens(Vec<Token>),
}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Glob({:?})", self.source)
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl Glob {
    /// Compiles `pattern`; fails on an empty pattern or a dangling `\`.
    pub fn new(pattern: &str) -> Result<Glob, String> {
        let tokens = tokenize(pattern)?;
        let literal = |ts: &[Token]| -> Option<String> {
            ts.iter()
                .map(|t| match t {
                    Token::Literal(c) => Some(*c),
                    _ => None,
                })
                .collect()
        };
        let matcher = if let Some(exact) = literal(&tokens) {
            Matcher::Exact(exact)
        } else if let Some((Token::Any, head)) = tokens.split_last()
            && let Some(prefix) = literal(head)
        {
            Matcher::Prefix(prefix)
        } else {
            Matcher::Tokens(tokens)
        };
        Ok(Glob {
            source: pattern.to_owned(),
            matcher,
        })
    }

    /// Returns the pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Returns whether `text` matches the whole pattern.
    pub fn matches(&self, text: &str) -> bool {
        match &self.matcher {
            Matcher::Exact(s) => s == text,
            Matcher::Prefix(p) => text.starts_with(p.as_str()),
            Matcher::Tokens(tokens) => matches_tokens(tokens, text),
        }
    }
}

/// Splits a pattern into tokens; fails on an empty pattern or a dangling `\`.
fn tokenize(pattern: &str) -> Result<Vec<Token>, String> {
    if pattern.is_empty() {
        return Err("empty pattern".to_owned());
    }
    let mut tokens = Vec::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(escaped) => tokens.push(Token::Literal(escaped)),
                None => return Err(format!("pattern {pattern:?} ends with a lone '\\'")),
            },
            '*' if chars.peek() == Some(&'*') => {
                chars.next();
                // `***` and more mean the same as `**`.
                while chars.peek() == Some(&'*') {
                    chars.next();
                }
                tokens.push(Token::Any);
            }
            '*' => tokens.push(Token::Segment),
            '?' => tokens.push(Token::One),
            c => tokens.push(Token::Literal(c)),
        }
    }
    Ok(tokens)
}

/// Runs the pattern automaton over `text`. `states[i]` means "the first `i` tokens can match the
/// text read so far".
fn matches_tokens(tokens: &[Token], text: &str) -> bool {
    let n = tokens.len();
    let mut states = vec![false; n + 1];
    let mut next = vec![false; n + 1];
    states[0] = true;
    close(tokens, &mut states);
    for c in text.chars() {
        next.fill(false);
        let mut any = false;
        for i in 0..n {
            if !states[i] {
                continue;
            }
            let (stay, advance) = match tokens[i] {
                Token::Literal(l) => (false, l == c),
                Token::One => (false, c != '/'),
                Token::Segment => (c != '/', false),
                Token::Any => (true, false),
            };
            if stay {
                next[i] = true;
                any = true;
            }
            if advance {
                next[i + 1] = true;
                any = true;
            }
        }
        if !any {
            return false;
        }
        close(tokens, &mut next);
        std::mem::swap(&mut states, &mut next);
    }
    states[n]
}

/// Stars may match nothing: wherever a star is reachable, so is the token after it.
fn close(tokens: &[Token], states: &mut [bool]) {
    for i in 0..tokens.len() {
        if states[i] && matches!(tokens[i], Token::Segment | Token::Any) {
            states[i + 1] = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, text: &str) -> bool {
        Glob::new(pattern).unwrap().matches(text)
    }

    #[test]
    fn literals_match_exactly() {
        assert!(m("alice", "alice"));
        assert!(!m("alice", "alice2"));
        assert!(!m("alice", "alic"));
    }

    #[test]
    fn single_star_stays_within_a_segment() {
        assert!(m(
            "hyperty://*/camera/*",
            "hyperty://localhost/camera/front"
        ));
        assert!(!m("hyperty://*/camera/*", "hyperty://evil/x/camera/front"));
        assert!(!m("hyperty://*/camera/*", "hyperty://localhost/camera/a/b"));
        assert!(m("hyperty://*/camera/*", "hyperty://localhost/camera/"));
        assert!(m("svc-*", "svc-conference"));
        assert!(m("*", "alice"));
        assert!(!m("*", "a/b"));
    }

    #[test]
    fn double_star_crosses_segments() {
        assert!(m("hyperty://**", "hyperty://localhost/a/b"));
        assert!(!m("hyperty://**", "object://localhost/a"));
        assert!(m("**", ""));
        assert!(m("object://**/x", "object://a/b/c/x"));
        assert!(m("a/**/z", "a//z"));
        assert!(!m("a/**/z", "a/z"));
    }

    #[test]
    fn question_mark_is_one_character() {
        assert!(m("cam-?", "cam-1"));
        assert!(!m("cam-?", "cam-12"));
        assert!(!m("cam-?", "cam-"));
        assert!(!m("a?b", "a/b"));
        assert!(m("caf?", "café"));
    }

    #[test]
    fn escapes_make_wildcards_literal() {
        assert!(m(r"a\*b", "a*b"));
        assert!(!m(r"a\*b", "axb"));
        assert!(Glob::new(r"abc\").is_err());
        assert!(Glob::new("").is_err());
    }

    #[test]
    fn picks_fast_paths() {
        assert_eq!(
            Glob::new("hyperty://**").unwrap().matcher,
            Matcher::Prefix("hyperty://".into())
        );
        assert_eq!(
            Glob::new("alice").unwrap().matcher,
            Matcher::Exact("alice".into())
        );
    }

    /// The obvious backtracking definition, exponential but fine for tiny inputs.
    fn reference(p: &[Token], t: &[char]) -> bool {
        let segment_char = |t: &[char]| t.first().is_some_and(|c| *c != '/');
        match p.first() {
            None => t.is_empty(),
            Some(Token::Literal(c)) => t.first() == Some(c) && reference(&p[1..], &t[1..]),
            Some(Token::One) => segment_char(t) && reference(&p[1..], &t[1..]),
            Some(Token::Segment) => {
                reference(&p[1..], t) || (segment_char(t) && reference(p, &t[1..]))
            }
            Some(Token::Any) => reference(&p[1..], t) || (!t.is_empty() && reference(p, &t[1..])),
        }
    }

    proptest::proptest! {
        /// The automaton and its fast paths agree with the reference definition.
        #[test]
        fn agrees_with_the_reference(pattern in "[ab/*?]{1,8}", text in "[ab/]{0,10}") {
            let glob = Glob::new(&pattern).unwrap();
            let tokens = tokenize(&pattern).unwrap();
            let chars: Vec<char> = text.chars().collect();
            proptest::prop_assert_eq!(glob.matches(&text), reference(&tokens, &chars));
        }

        /// Any pattern text compiles or is refused; nothing panics.
        #[test]
        fn never_panics(pattern in ".{0,20}", text in ".{0,20}") {
            if let Ok(glob) = Glob::new(&pattern) {
                let _ = glob.matches(&text);
            }
        }
    }

    #[test]
    fn many_stars_do_not_blow_up() {
        let pattern = "*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b";
        let text = "a".repeat(5000);
        assert!(!m(pattern, &text));
        assert!(m("**a**a**a**b", &format!("{text}b")));
    }
}
