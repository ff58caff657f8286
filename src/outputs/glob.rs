//! Output globs, matched the way the runner matches them, so the relay can
//! check that a `file` line names a path the run asked for.
//!
//! The runner (`globToRegExp` in `runner/runner.mjs`) turns a glob into an
//! anchored regular expression: `**/` is "any folders, or none", `**` is
//! anything, `*` and `?` stay within one name, `[abc]`, `[a-z]` and `[!a]`
//! are classes (a class is not kept within one name), and a `[` without a
//! `]` is itself. The tests below pin those cases. The matcher walks a set
//! of positions in the pattern, one character of the path at a time, so
//! its work is bounded by the two lengths' product whatever the pattern
//! (a backtracking matcher can be made to take exponential time).

/// A compiled glob.
#[derive(Debug, Clone)]
pub(crate) struct Glob {
    tokens: Vec<Token>,
}

#[derive(Debug, Clone)]
enum Token {
    /// This character.
    Literal(char),
    /// `?`: one character, not `/`.
    AnyInName,
    /// `[...]`: one character (any, `/` too) in the class, or, negated, not in it.
    Class {
        negated: bool,
        items: Vec<(char, char)>,
    },
    /// `*` (`crosses: false`, within one name) or `**` (anything): zero or
    /// more characters.
    Star { crosses: bool },
    /// The start of `**/`, an optional group: either skip the next `len`
    /// tokens, or match them.
    Optional { len: usize },
}

impl Glob {
    /// Compiles `pattern`. Every string is a glob; there is nothing to refuse.
    pub(crate) fn new(pattern: &str) -> Glob {
        let chars: Vec<char> = pattern.chars().collect();
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '*' if chars.get(i + 1) == Some(&'*') => {
                    if chars.get(i + 2) == Some(&'/') {
                        tokens.push(Token::Optional { len: 2 });
                        tokens.push(Token::Star { crosses: true });
                        tokens.push(Token::Literal('/'));
                        i += 3;
                    } else {
                        tokens.push(Token::Star { crosses: true });
                        i += 2;
                    }
                }
                '*' => {
                    tokens.push(Token::Star { crosses: false });
                    i += 1;
                }
                '?' => {
                    tokens.push(Token::AnyInName);
                    i += 1;
                }
                '[' => match chars[i + 1..].iter().position(|c| *c == ']') {
                    Some(offset) => {
                        tokens.push(class(&chars[i + 1..i + 1 + offset]));
                        i += offset + 2;
                    }
                    None => {
                        tokens.push(Token::Literal('['));
                        i += 1;
                    }
                },
                c => {
                    tokens.push(Token::Literal(c));
                    i += 1;
                }
            }
        }
        Glob { tokens }
    }

    /// Whether the whole of `path` matches.
    pub(crate) fn matches(&self, path: &str) -> bool {
        let mut current = vec![false; self.tokens.len() + 1];
        current[0] = true;
        self.close(&mut current);
        for c in path.chars() {
            let mut next = vec![false; self.tokens.len() + 1];
            for (at, token) in self.tokens.iter().enumerate() {
                if !current[at] {
                    continue;
                }
                match token {
                    Token::Literal(l) if *l == c => next[at + 1] = true,
                    Token::AnyInName if c != '/' => next[at + 1] = true,
                    Token::Class { negated, items } => {
                        let inside = items.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c));
                        if inside != *negated {
                            next[at + 1] = true;
                        }
                    }
                    Token::Star { crosses } if *crosses || c != '/' => next[at] = true,
                    _ => {}
                }
            }
            self.close(&mut next);
            if !next.contains(&true) {
                return false;
            }
            current = next;
        }
        current[self.tokens.len()]
    }

    /// Adds the positions reachable without reading a character: past a
    /// star (it may match nothing) and past an optional group.
    fn close(&self, states: &mut [bool]) {
        // Every such move goes forward, so one pass in order suffices.
        for at in 0..self.tokens.len() {
            if !states[at] {
                continue;
            }
            match self.tokens[at] {
                Token::Star { .. } => states[at + 1] = true,
                Token::Optional { len } => {
                    states[at + 1] = true;
                    states[at + 1 + len] = true;
                }
                _ => {}
            }
        }
    }
}

/// A class body, as the regular expression the runner makes of it reads
/// it: a leading `!` (or `^`) negates, `a-z` is a range, anything else is
/// itself.
fn class(body: &[char]) -> Token {
    let (negated, body) = match body.first() {
        Some('!' | '^') => (true, &body[1..]),
        _ => (false, body),
    };
    let mut items = Vec::new();
    let mut i = 0;
    while i < body.len() {
        if body.get(i + 1) == Some(&'-') && i + 2 < body.len() {
            items.push((body[i], body[i + 2]));
            i += 3;
        } else {
            items.push((body[i], body[i]));
            i += 1;
        }
    }
    Token::Class { negated, items }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, path: &str) -> bool {
        Glob::new(pattern).matches(path)
    }

    #[test]
    fn double_star_slash_is_any_folders_or_none() {
        assert!(matches("output/**", "output/a.png"));
        assert!(matches("output/**", "output/charts/a.png"));
        assert!(!matches("output/**", "outputs/a.png"));
        assert!(matches("**/*.md", "report.md"));
        assert!(matches("**/*.md", "a/b/report.md"));
        assert!(!matches("**/*.md", "a/b/report.txt"));
        assert!(matches("a/**/b.txt", "a/b.txt"));
        assert!(matches("a/**/b.txt", "a/x/y/b.txt"));
        assert!(matches("**", "a/b/c"));
    }

    #[test]
    fn star_and_question_mark_stay_within_one_name() {
        assert!(matches("*.txt", "notes.txt"));
        assert!(!matches("*.txt", "output/notes.txt"));
        assert!(matches("out?ut/*", "output/x"));
        assert!(!matches("a?b", "a/b"));
        assert!(matches("*", "x"));
        assert!(!matches("*", "x/y"));
        assert!(matches("report.md", "report.md"));
        assert!(!matches("report.md", "report.mdx"));
        assert!(!matches("report.md", "xreport.md"));
    }

    #[test]
    fn classes_ranges_and_negation() {
        assert!(matches("[abc].txt", "b.txt"));
        assert!(!matches("[abc].txt", "d.txt"));
        assert!(matches("f[0-9].csv", "f7.csv"));
        assert!(!matches("f[0-9].csv", "fx.csv"));
        assert!(matches("[!a]*", "b.txt"));
        assert!(!matches("[!a]*", "a.txt"));
        // As in the runner's regular expression, a class is not held to one name.
        assert!(matches("a[!x]b", "a/b"));
        // A `[` with no `]` is itself.
        assert!(matches("a[b", "a[b"));
        // `.` is itself, not "any character".
        assert!(!matches("a.b", "axb"));
    }

    #[test]
    fn many_stars_take_no_exponential_time() {
        let pattern = "*a".repeat(40) + "b";
        let path = "a".repeat(4000);
        assert!(!matches(&pattern, &path));
    }
}
