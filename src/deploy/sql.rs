//! PostgreSQL-aware SQL text utilities for deploy files: statement splitting,
//! checksum normalisation, directives and keyword peeking. Pure functions, no I/O.
//!
//! Everything here rests on one lexer that knows where `;`, whitespace and
//! comments are *not* significant: single-quoted strings (`''` escapes),
//! `E'…'` strings (backslash escapes), double-quoted identifiers, dollar-quoted
//! bodies (`$$…$$`, `$tag$…$tag$`; `$1` is a parameter, not a tag), `--` line
//! comments and nested `/* */` block comments. Unterminated constructs run to the
//! end of the text rather than erroring: PostgreSQL will report them with a
//! proper message when the statement is executed. Plain `'…'` strings are read
//! with `standard_conforming_strings = on` (the default since PostgreSQL 9.1):
//! a backslash there is an ordinary character.
//!
//! Known limits of `BEGIN ATOMIC … END` tracking: the body ends at the first
//! `END` keyword not closing a `CASE`. SQL-standard bodies may only contain
//! plain SQL statements, where `END` appears only to close `CASE` or the body
//! itself, and `CASE`/`END` are reserved words (so they cannot be bare
//! identifiers). A `BEGIN ATOMIC` written inside a dollar-quoted body or a
//! string is, correctly, not seen at all.

use sha2::{Digest, Sha256};

/// One statement of a file, without its terminating `;`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub text: String,
    /// 1-based line of the statement's first significant token.
    pub line: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Unquoted identifier or keyword (letters, digits, `_`, `$`, non-ASCII).
    Word,
    /// Any other single character outside quotes and comments, including `;`.
    Punct,
    Space,
    Comment,
    /// String literal of any flavour, including dollar-quoted bodies.
    Literal,
    /// Double-quoted identifier.
    QuotedIdent,
}

#[derive(Debug, Clone, Copy)]
struct Token {
    kind: Kind,
    start: usize,
    end: usize,
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_ident_char(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit() || b == b'$'
}

/// Splits `sql` into tokens. Token boundaries always fall on ASCII bytes or the
/// ends of the text, so every `start..end` is a valid `str` slice.
fn tokenize(sql: &str) -> Vec<Token> {
    tokens(sql).collect()
}

/// The tokens of `sql` one at a time, for callers that stop early (a statement's first keywords).
fn tokens(sql: &str) -> Tokens<'_> {
    Tokens { s: sql.as_bytes(), i: 0 }
}

struct Tokens<'a> {
    s: &'a [u8],
    i: usize,
}

impl Iterator for Tokens<'_> {
    type Item = Token;

    fn next(&mut self) -> Option<Token> {
        let (s, n) = (self.s, self.s.len());
        let mut i = self.i;
        if i >= n {
            return None;
        }
        let start = i;
        let b = s[i];
        let kind = if b.is_ascii_whitespace() {
            while i < n && s[i].is_ascii_whitespace() {
                i += 1;
            }
            Kind::Space
        } else if b == b'-' && s.get(i + 1) == Some(&b'-') {
            while i < n && s[i] != b'\n' {
                i += 1;
            }
            Kind::Comment
        } else if b == b'/' && s.get(i + 1) == Some(&b'*') {
            i = skip_block_comment(s, i);
            Kind::Comment
        } else if b == b'\'' {
            i = skip_quoted(s, i + 1, b'\'', false);
            Kind::Literal
        } else if b == b'"' {
            i = skip_quoted(s, i + 1, b'"', false);
            Kind::QuotedIdent
        } else if (b == b'e' || b == b'E') && s.get(i + 1) == Some(&b'\'') {
            // Reached only at a word start, so this E is a prefix, not the tail of an identifier.
            i = skip_quoted(s, i + 2, b'\'', true);
            Kind::Literal
        } else if b == b'$' {
            match dollar_tag_len(s, i) {
                Some(tag_len) => {
                    i = skip_dollar_body(s, i, tag_len);
                    Kind::Literal
                }
                None => {
                    // `$1`-style parameter: the whole thing is one word-like token.
                    i += 1;
                    while i < n && s[i].is_ascii_digit() {
                        i += 1;
                    }
                    Kind::Word
                }
            }
        } else if is_ident_start(b) {
            while i < n && is_ident_char(s[i]) {
                i += 1;
            }
            Kind::Word
        } else if b.is_ascii_digit() {
            // Numbers: keep `1e5` or `1.5` together so they never look like an E-string prefix.
            while i < n && (s[i].is_ascii_alphanumeric() || s[i] == b'.' || s[i] == b'_') {
                i += 1;
            }
            Kind::Word
        } else {
            i += 1;
            Kind::Punct
        };
        self.i = i;
        Some(Token { kind, start, end: i })
    }
}

fn skip_block_comment(s: &[u8], mut i: usize) -> usize {
    let mut depth = 0usize;
    while i < s.len() {
        if s[i] == b'/' && s.get(i + 1) == Some(&b'*') {
            depth += 1;
            i += 2;
        } else if s[i] == b'*' && s.get(i + 1) == Some(&b'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    s.len()
}

/// `i` is just past the opening quote. Doubled quotes are escapes; with
/// `backslash`, `\x` escapes any byte (E-strings).
fn skip_quoted(s: &[u8], mut i: usize, quote: u8, backslash: bool) -> usize {
    while i < s.len() {
        let b = s[i];
        if backslash && b == b'\\' {
            i += 2;
        } else if b == quote {
            if s.get(i + 1) == Some(&quote) {
                i += 2;
            } else {
                return i + 1;
            }
        } else {
            i += 1;
        }
    }
    s.len()
}

/// If a dollar-quote opener starts at `i`, the length of `$tag$` including both dollars.
fn dollar_tag_len(s: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    if j < s.len() && s[j] == b'$' {
        return Some(2);
    }
    if j >= s.len() || !is_ident_start(s[j]) {
        return None;
    }
    while j < s.len() && (is_ident_start(s[j]) || s[j].is_ascii_digit()) {
        j += 1;
    }
    (j < s.len() && s[j] == b'$').then(|| j + 1 - i)
}

fn skip_dollar_body(s: &[u8], open: usize, tag_len: usize) -> usize {
    let tag = &s[open..open + tag_len];
    let mut i = open + tag_len;
    while i + tag_len <= s.len() {
        if s[i] == b'$' && &s[i..i + tag_len] == tag {
            return i + tag_len;
        }
        i += 1;
    }
    s.len()
}

fn is_significant(t: &Token) -> bool {
    !matches!(t.kind, Kind::Space | Kind::Comment)
}

/// Split a file into statements on `;` that are outside quotes, comments,
/// dollar bodies and `BEGIN ATOMIC … END` bodies. Statements holding only
/// whitespace and comments are dropped.
pub fn split_statements(sql: &str) -> Vec<Statement> {
    let tokens = tokenize(sql);
    let mut out = Vec::new();
    let mut first: Option<usize> = None;
    let mut prev_word_begin = false;
    let mut atomic = false;
    let mut case_depth = 0usize;
    let mut line = 1usize;
    let mut line_counted_to = 0usize;
    let mut first_line = 1usize;

    for t in &tokens {
        let text = &sql[t.start..t.end];
        if t.kind == Kind::Punct && text == ";" && !atomic {
            if let Some(f) = first {
                out.push(Statement {
                    text: sql[f..t.start].trim_end_matches(|c: char| c.is_ascii_whitespace()).to_string(),
                    line: first_line,
                });
            }
            first = None;
            prev_word_begin = false;
            continue;
        }
        if !is_significant(t) {
            continue;
        }
        if first.is_none() {
            line += bytecount_newlines(&sql.as_bytes()[line_counted_to..t.start]);
            line_counted_to = t.start;
            first = Some(t.start);
            first_line = line;
        }
        if t.kind != Kind::Word {
            prev_word_begin = false;
            continue;
        }
        if atomic {
            if text.eq_ignore_ascii_case("case") {
                case_depth += 1;
            } else if text.eq_ignore_ascii_case("end") {
                if case_depth > 0 {
                    case_depth -= 1;
                } else {
                    atomic = false;
                }
            }
        } else if prev_word_begin && text.eq_ignore_ascii_case("atomic") {
            atomic = true;
            case_depth = 0;
        }
        prev_word_begin = text.eq_ignore_ascii_case("begin");
    }
    if let Some(f) = first {
        out.push(Statement {
            text: sql[f..].trim_end_matches(|c: char| c.is_ascii_whitespace()).to_string(),
            line: first_line,
        });
    }
    out
}

fn bytecount_newlines(s: &[u8]) -> usize {
    s.iter().filter(|&&b| b == b'\n').count()
}

/// Canonical text of a statement for checksums: comments dropped, whitespace
/// outside literals collapsed to one space, trimmed. Literals, quoted
/// identifiers and dollar bodies are kept byte-for-byte and keyword case is
/// untouched, so only changes that can alter meaning alter the checksum.
pub fn normalize_for_checksum(stmt: &str) -> String {
    let mut out = String::with_capacity(stmt.len());
    let mut pending_space = false;
    for t in tokens(stmt) {
        if !is_significant(&t) {
            // A comment separates tokens just like whitespace does (`a/**/b` is `a b`).
            pending_space = true;
            continue;
        }
        if pending_space && !out.is_empty() {
            out.push(' ');
        }
        pending_space = false;
        out.push_str(&stmt[t.start..t.end]);
    }
    out
}

/// Lower-case hex SHA-256 of `text`.
pub fn checksum(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    let mut hex = String::with_capacity(64);
    for b in digest.iter() {
        hex.push(char::from(b"0123456789abcdef"[(b >> 4) as usize]));
        hex.push(char::from(b"0123456789abcdef"[(b & 15) as usize]));
    }
    hex
}

/// The value of a `-- gateway: <value>` directive on the file's first line
/// (e.g. `no-transaction`), whitespace tolerant and with the `gateway` key
/// matched case-insensitively. Unknown values are returned as written so the
/// caller can reject them rather than silently ignore a typo.
pub fn first_line_directive(content: &str) -> Option<&str> {
    let content = content.strip_prefix('\u{feff}').unwrap_or(content);
    let first = content.split('\n').next()?;
    let rest = first.trim().strip_prefix("--")?.trim_start();
    let key = rest.get(..7)?;
    if !key.eq_ignore_ascii_case("gateway") {
        return None;
    }
    let value = rest[7..].trim_start().strip_prefix(':')?.trim();
    (!value.is_empty() && !value.contains(char::is_whitespace)).then_some(value)
}

/// The first `n` bare words of a statement, upper-cased, skipping whitespace
/// and comments. Stops early at the first token that is not a bare word (a
/// parenthesis, a quoted identifier, …), since past that point the words no
/// longer classify the statement.
pub fn leading_keywords(stmt: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for t in tokens(stmt) {
        if out.len() >= n {
            break;
        }
        if !is_significant(&t) {
            continue;
        }
        if t.kind != Kind::Word {
            break;
        }
        out.push(stmt[t.start..t.end].to_ascii_uppercase());
    }
    out
}

/// Why a deploy never runs this statement, or `None` when it may run.
///
/// - Transaction control (`BEGIN`, `START TRANSACTION`, `COMMIT`, `END`, `ROLLBACK`, `ABORT`,
///   `SAVEPOINT`, `RELEASE`, `PREPARE TRANSACTION`, `COMMIT/ROLLBACK PREPARED`): a deploy is one
///   transaction that the engine opens and ends; a file that ends it would commit half a deploy and run
///   the rest in autocommit, and one that opens its own would leave the engine's bookkeeping wrong.
/// - `COPY … FROM STDIN`: the data would have to come from the client, which a deploy has no stream
///   for (put the rows in an `INSERT` instead).
///
/// Only the statement's own words count: the same words inside a string, a dollar-quoted function
/// body or a comment are not seen.
pub fn refused_statement(stmt: &str) -> Option<String> {
    let words: Vec<(Kind, String)> = tokenize(stmt)
        .into_iter()
        .filter(is_significant)
        .map(|t| (t.kind, stmt[t.start..t.end].to_ascii_uppercase()))
        .collect();
    let word = |i: usize| words.get(i).filter(|(k, _)| *k == Kind::Word).map(|(_, w)| w.as_str());
    let first = word(0)?;
    let control = matches!(
        (first, word(1)),
        ("BEGIN" | "START" | "COMMIT" | "END" | "ROLLBACK" | "ABORT" | "SAVEPOINT" | "RELEASE", _)
            | ("PREPARE", Some("TRANSACTION"))
    );
    if control {
        return Some(format!(
            "{first} is transaction control: a deploy runs in one transaction that the gateway opens and ends, \
             so files may not begin, end or split it (remove the statement; a file that must run outside the \
             transaction starts with `-- gateway: no-transaction`)"
        ));
    }
    if first == "COPY" {
        let from_stdin = words
            .windows(2)
            .any(|w| w[0].0 == Kind::Word && w[0].1 == "FROM" && w[1].0 == Kind::Word && w[1].1 == "STDIN");
        if from_stdin {
            return Some(
                "COPY … FROM STDIN reads rows from the client, and a deploy has none to send; \
                 write the rows as INSERT statements (a seeder or a migration)"
                    .to_string(),
            );
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_statements() {
        for s in [
            "BEGIN",
            "begin isolation level serializable",
            "START TRANSACTION",
            "COMMIT",
            "commit prepared 'x'",
            "END",
            "ROLLBACK",
            "rollback to savepoint a",
            "ABORT",
            "SAVEPOINT a",
            "RELEASE a",
            "PREPARE TRANSACTION 'x'",
            "/* c */ COMMIT",
            "COPY t (a) FROM STDIN",
            "copy t from stdin with (format csv)",
        ] {
            assert!(refused_statement(s).is_some(), "{s}");
        }
        for s in [
            "DO $$ BEGIN COMMIT; END $$",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END",
            "SELECT 'COMMIT'",
            "COPY t TO STDOUT",
            "COPY t FROM '/tmp/x'",
            "PREPARE p AS SELECT 1",
            "CALL p()",
            "INSERT INTO t VALUES ('FROM STDIN')",
            "",
        ] {
            assert!(refused_statement(s).is_none(), "{s}");
        }
    }

    fn texts(sql: &str) -> Vec<String> {
        split_statements(sql).into_iter().map(|s| s.text).collect()
    }

    /// Found by the `sql_split` fuzz property: statements were cut with `str::trim_end`, which
    /// also strips Unicode spaces such as U+00A0 and U+3000. Those bytes are identifier
    /// characters to the lexer (and to PostgreSQL), so an identifier ending in one lost it.
    #[test]
    fn statement_end_keeps_non_ascii_whitespace() {
        let sql = "CREATE TABLE t\u{a0} (x int);\nCREATE TABLE u\u{3000}; SELECT 1\u{2028}\t\n";
        assert_eq!(texts(sql), vec!["CREATE TABLE t\u{a0} (x int)", "CREATE TABLE u\u{3000}", "SELECT 1\u{2028}"]);
    }

    #[test]
    fn splits_simple_and_drops_empty() {
        let sql = "CREATE TABLE a (x int);\n\n;  -- only a comment\n;\nSELECT 1";
        assert_eq!(texts(sql), vec!["CREATE TABLE a (x int)", "SELECT 1"]);
    }

    #[test]
    fn line_numbers_point_at_first_token() {
        let sql = "-- header\n\nSELECT 1;\n/* c\n */ SELECT\n 2;\n\n\nSELECT 3;";
        let st = split_statements(sql);
        let lines: Vec<usize> = st.iter().map(|s| s.line).collect();
        assert_eq!(lines, vec![3, 5, 9]);
        assert_eq!(st[1].text, "SELECT\n 2");
    }

    #[test]
    fn semicolons_in_strings_and_identifiers() {
        let sql = "SELECT 'a;b', 'it''s;', \"we;ird\"\"x;\" FROM t; SELECT 2";
        assert_eq!(texts(sql), vec!["SELECT 'a;b', 'it''s;', \"we;ird\"\"x;\" FROM t", "SELECT 2"]);
    }

    #[test]
    fn e_strings_use_backslash_escapes() {
        let sql = "SELECT E'\\';' AS x; SELECT e'a\\\\'; SELECT 3";
        assert_eq!(texts(sql), vec!["SELECT E'\\';' AS x", "SELECT e'a\\\\'", "SELECT 3"]);
        // In a standard string a backslash is literal, so the quote ends the string.
        assert_eq!(texts("SELECT '\\'; SELECT 2").len(), 2);
        // An identifier ending in e is not an E-string prefix.
        assert_eq!(texts("SELECT somee'\\'; SELECT 2").len(), 2);
    }

    #[test]
    fn dollar_quoted_bodies() {
        let sql = "CREATE FUNCTION f() RETURNS int AS $fn$\n\
                   BEGIN\n  PERFORM 1; RAISE NOTICE $$a;b$$;\n  RETURN 1;\nEND;\n$fn$ LANGUAGE plpgsql;\n\
                   SELECT f();";
        let st = texts(sql);
        assert_eq!(st.len(), 2, "{st:?}");
        assert!(st[0].ends_with("$fn$ LANGUAGE plpgsql"));
        let sql = "DO $$ BEGIN PERFORM 1; END $$; SELECT 2";
        assert_eq!(texts(sql).len(), 2);
    }

    #[test]
    fn positional_parameters_are_not_tags() {
        let sql = "PREPARE p AS SELECT $1, $2 FROM t WHERE a = $1; SELECT 'x'";
        assert_eq!(texts(sql).len(), 2);
        // Identifiers may contain `$` without opening a body.
        assert_eq!(texts("SELECT a$b; SELECT 2").len(), 2);
    }

    #[test]
    fn comments_line_and_nested_block() {
        let sql = "SELECT 1 /* outer /* inner; */ still; */ + 1; SELECT '--;' -- x;y\n; SELECT 3";
        assert_eq!(texts(sql), vec!["SELECT 1 /* outer /* inner; */ still; */ + 1", "SELECT '--;' -- x;y", "SELECT 3"]);
    }

    #[test]
    fn begin_atomic_bodies_are_kept_whole() {
        let sql = "CREATE FUNCTION f(a int) RETURNS int LANGUAGE sql\nBEGIN ATOMIC\n  \
                   SELECT CASE WHEN a > 0 THEN 1 ELSE 0 END;\n  SELECT a + 1;\nEND;\nSELECT 2;";
        let st = texts(sql);
        assert_eq!(st.len(), 2, "{st:?}");
        assert!(st[0].ends_with("SELECT a + 1;\nEND"));
        assert_eq!(st[1], "SELECT 2");
        // Plain transaction BEGIN is not a body.
        assert_eq!(texts("BEGIN; SELECT 1; END;").len(), 3);
        // Comments between BEGIN and ATOMIC still open a body.
        assert_eq!(texts("CREATE PROCEDURE p() BEGIN /*x*/ ATOMIC INSERT INTO t VALUES (1); END; SELECT 1").len(), 2);
    }

    #[test]
    fn unterminated_constructs_do_not_panic() {
        for sql in ["SELECT 'abc", "SELECT $x$ abc", "/* never", "SELECT \"x", "E'\\", "$", "$a"] {
            let st = split_statements(sql);
            assert!(st.len() <= 1);
            let _ = normalize_for_checksum(sql);
        }
    }

    #[test]
    fn utf8_text_is_sliced_safely() {
        let sql = "SELECT 'héllo; wörld', naïve FROM t; SELECT '日本'";
        assert_eq!(texts(sql).len(), 2);
        assert_eq!(leading_keywords("sélect x", 1), vec!["SéLECT"]);
    }

    #[test]
    fn normalisation_ignores_layout_but_not_literals() {
        let a = "CREATE   TABLE t (\n  x int, -- note\n  y text /* c */\n)";
        let b = "CREATE TABLE t ( x int, y text )";
        assert_eq!(normalize_for_checksum(a), normalize_for_checksum(b));
        assert_eq!(normalize_for_checksum(b), "CREATE TABLE t ( x int, y text )");
        // Inside literals and bodies nothing is touched.
        let f1 = "CREATE FUNCTION f() AS $$ SELECT  1 $$";
        let f2 = "CREATE FUNCTION f() AS $$ SELECT 1 $$";
        assert_ne!(normalize_for_checksum(f1), normalize_for_checksum(f2));
        assert_ne!(normalize_for_checksum("SELECT 'a  b'"), normalize_for_checksum("SELECT 'a b'"));
        assert_ne!(normalize_for_checksum("SELECT \"a  b\""), normalize_for_checksum("SELECT \"a b\""));
        // A comment separates tokens.
        assert_eq!(normalize_for_checksum("SELECT/**/1"), "SELECT 1");
        // Keyword case is preserved.
        assert_ne!(normalize_for_checksum("select 1"), normalize_for_checksum("SELECT 1"));
        // A `--` inside a string is not a comment.
        assert_eq!(normalize_for_checksum("SELECT '--x'  "), "SELECT '--x'");
    }

    #[test]
    fn checksum_is_sha256_hex() {
        assert_eq!(checksum(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(checksum("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn directives() {
        assert_eq!(
            first_line_directive("-- gateway: no-transaction\nCREATE INDEX CONCURRENTLY ..."),
            Some("no-transaction")
        );
        assert_eq!(first_line_directive("  --gateway:no-transaction  \r\nx"), Some("no-transaction"));
        assert_eq!(first_line_directive("\u{feff}--   Gateway :  no-transaction"), Some("no-transaction"));
        assert_eq!(first_line_directive("\n-- gateway: no-transaction"), None);
        assert_eq!(first_line_directive("-- a comment"), None);
        assert_eq!(first_line_directive("-- gateway:"), None);
        assert_eq!(first_line_directive("SELECT 1"), None);
        assert_eq!(first_line_directive(""), None);
        assert_eq!(first_line_directive("-- gatewayé"), None);
    }

    #[test]
    fn keywords() {
        assert_eq!(
            leading_keywords("/* x */ create or\n replace -- y\n function f()", 4),
            vec!["CREATE", "OR", "REPLACE", "FUNCTION"]
        );
        assert_eq!(leading_keywords("create table t(x int)", 10), vec!["CREATE", "TABLE", "T"]);
        assert_eq!(leading_keywords("CREATE TYPE x", 2), vec!["CREATE", "TYPE"]);
        assert_eq!(leading_keywords("create domain d", 0), Vec::<String>::new());
        assert_eq!(leading_keywords("-- only", 3), Vec::<String>::new());
    }
}
