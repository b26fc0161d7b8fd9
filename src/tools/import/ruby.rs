//! Reading `/etc/gitlab/gitlab.rb` (Omnibus): the subset of Ruby literal syntax GitLab's docs use.

use super::{find_jwt, Found, Lit};

pub(super) fn from_gitlab_rb(text: &str) -> Result<Found, String> {
    let mut assignment = None;
    let mut relative_root = None;
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let start = offset;
        offset += line.len();
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        for key in [
            "gitlab_rails['omniauth_providers']",
            "gitlab_rails[\"omniauth_providers\"]",
        ] {
            if let Some(rest) = trimmed.strip_prefix(key) {
                let after = rest.trim_start();
                if after.starts_with('=') && !after.starts_with("==") {
                    let eq = start + indent + key.len() + (rest.len() - after.len());
                    assignment = Some((i + 1, eq + 1)); // the last assignment wins, as in Ruby
                }
            }
        }
        if trimmed.starts_with("external_url") {
            let mut p = Parser::new(text, start + indent + "external_url".len());
            p.skip_ws();
            if let Ok(Lit::Str(url)) = p.value() {
                relative_root = url_path(&url);
            }
        }
    }
    let (line, at) = assignment.ok_or(
        "no gitlab_rails['omniauth_providers'] = [...] assignment (commented-out lines do not count)",
    )?;
    let mut p = Parser::new(text, at);
    let providers = p.value()?;
    p.end_of_statement()?;
    let entry = find_jwt(
        &providers,
        &format!("gitlab_rails['omniauth_providers'] (line {line})"),
    )?;
    Ok(Found {
        entry,
        relative_root,
        notes: Vec::new(),
    })
}

/// The path of `external_url`, when it has one beyond `/`.
fn url_path(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let path = &rest[rest.find('/')?..];
    let path = path.trim_end_matches('/');
    (!path.is_empty()).then(|| path.to_string())
}

/// A recursive-descent reader of Ruby literals over `text`, from a byte offset.
struct Parser<'a> {
    text: &'a str,
    pos: usize,
    depth: usize,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str, pos: usize) -> Self {
        Parser {
            text,
            pos,
            depth: 0,
        }
    }

    fn line(&self) -> usize {
        self.text[..self.pos.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    fn err<T>(&self, what: impl std::fmt::Display) -> Result<T, String> {
        Err(format!("line {}: {what}", self.line()))
    }

    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    /// Skip spaces, newlines and `#` comments.
    fn skip_ws(&mut self) {
        loop {
            let r = self.rest();
            let t = r.trim_start();
            self.pos += r.len() - t.len();
            if t.starts_with('#') {
                self.pos += t.find('\n').unwrap_or(t.len());
            } else {
                return;
            }
        }
    }

    fn eat(&mut self, s: &str) -> bool {
        if self.rest().starts_with(s) {
            self.pos += s.len();
            true
        } else {
            false
        }
    }

    /// After the literal: nothing but spaces and a comment up to the end of the line.
    fn end_of_statement(&mut self) -> Result<(), String> {
        let r = self.rest();
        let line_end = r.find('\n').unwrap_or(r.len());
        let tail = r[..line_end].trim();
        if tail.is_empty() || tail.starts_with('#') {
            Ok(())
        } else {
            self.err(format!(
                "unexpected `{}` after the providers array",
                snippet(tail)
            ))
        }
    }

    fn value(&mut self) -> Result<Lit, String> {
        self.skip_ws();
        self.depth += 1;
        if self.depth > 64 {
            return self.err("nested too deeply");
        }
        let v = match self.peek() {
            None => self.err("the file ends where a value was expected"),
            Some('{') => self.hash(),
            Some('[') => self.array(),
            Some('\'') | Some('"') => self.string().map(Lit::Str),
            Some(':') => {
                self.pos += 1;
                if matches!(self.peek(), Some('\'') | Some('"')) {
                    self.string().map(Lit::Str)
                } else {
                    Ok(Lit::Str(self.ident()?))
                }
            }
            Some(c) if c.is_ascii_digit() || c == '-' || c == '+' => self.number(),
            Some(_) => {
                if self.eat("File.read(") {
                    self.skip_ws();
                    let path = self.string()?;
                    self.skip_ws();
                    if !self.eat(")") {
                        return self.err("File.read takes one string literal");
                    }
                    Ok(Lit::FileRead(path))
                } else {
                    let word = self.ident().or_else(|_| {
                        self.err(format!(
                            "`{}` is not a literal this importer reads (strings, numbers, arrays, hashes, true/false/nil, File.read)",
                            snippet(self.rest())
                        ))
                    })?;
                    match word.as_str() {
                        "true" => Ok(Lit::Bool(true)),
                        "false" => Ok(Lit::Bool(false)),
                        "nil" => Ok(Lit::Nil),
                        _ => self.err(format!(
                            "`{}` is Ruby code, not a literal: write the value itself",
                            snippet(&word)
                        )),
                    }
                }
            }
        };
        self.depth -= 1;
        v
    }

    fn ident(&mut self) -> Result<String, String> {
        let r = self.rest();
        let n = r
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(r.len());
        let n = if r[n..].starts_with(['?', '!']) {
            n + 1
        } else {
            n
        };
        if n == 0 || r.starts_with(|c: char| c.is_ascii_digit()) {
            return self.err(format!("expected a name, found `{}`", snippet(r)));
        }
        self.pos += n;
        Ok(r[..n].to_string())
    }

    fn number(&mut self) -> Result<Lit, String> {
        let r = self.rest();
        let n = r
            .char_indices()
            .find(|&(i, c)| {
                !(c.is_ascii_digit() || c == '_' || c == '.' || ((c == '-' || c == '+') && i == 0))
            })
            .map_or(r.len(), |(i, _)| i);
        let lit = r[..n].replace('_', "");
        self.pos += n;
        if let Ok(i) = lit.parse::<i64>() {
            Ok(Lit::Int(i))
        } else if let Ok(f) = lit.parse::<f64>() {
            Ok(Lit::Float(f))
        } else {
            self.err(format!("`{}` is not a number", snippet(&r[..n])))
        }
    }

    fn string(&mut self) -> Result<String, String> {
        let line = self.line();
        let Some(q) = self.peek() else {
            return self.err("expected a string");
        };
        self.pos += 1;
        let mut out = String::new();
        let mut chars = self.rest().char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                c if c == q => {
                    self.pos += i + 1;
                    return Ok(out);
                }
                '\\' => {
                    let Some((_, e)) = chars.next() else { break };
                    if q == '\'' {
                        // single quotes: only \' and \\ are escapes
                        if e != '\'' && e != '\\' {
                            out.push('\\');
                        }
                        out.push(e);
                    } else {
                        out.push(match e {
                            'n' => '\n',
                            't' => '\t',
                            'r' => '\r',
                            's' => ' ',
                            '0' => '\0',
                            'e' => '\x1b',
                            '"' | '\\' | '#' | '\'' => e,
                            other => {
                                self.pos += i;
                                return self
                                    .err(format!("the escape \\{other} is not supported here"));
                            }
                        });
                    }
                }
                '#' if q == '"' && self.text[self.pos + i..].starts_with("#{") => {
                    self.pos += i;
                    return self
                        .err("string interpolation #{...} is Ruby code: write the value itself");
                }
                c => out.push(c),
            }
        }
        Err(format!(
            "line {line}: the string starting here is never closed"
        ))
    }

    fn array(&mut self) -> Result<Lit, String> {
        self.pos += 1; // [
        let mut items = Vec::new();
        loop {
            self.skip_ws();
            if self.eat("]") {
                return Ok(Lit::Arr(items));
            }
            items.push(self.value()?);
            self.skip_ws();
            if self.eat(",") {
                continue;
            }
            if self.eat("]") {
                return Ok(Lit::Arr(items));
            }
            return self.err(format!(
                "expected `,` or `]` in an array, found `{}`",
                snippet(self.rest())
            ));
        }
    }

    fn hash(&mut self) -> Result<Lit, String> {
        self.pos += 1; // {
        let mut pairs = Vec::new();
        loop {
            self.skip_ws();
            if self.eat("}") {
                return Ok(Lit::Hash(pairs));
            }
            let key = self.key()?;
            let value = self.value()?;
            pairs.push((key, value));
            self.skip_ws();
            if self.eat(",") {
                continue;
            }
            if self.eat("}") {
                return Ok(Lit::Hash(pairs));
            }
            return self.err(format!(
                "expected `,` or `}}` in a hash, found `{}`",
                snippet(self.rest())
            ));
        }
    }

    /// `name:`, `"name":`, `:name =>`, `"name" =>` (the separator consumed).
    fn key(&mut self) -> Result<String, String> {
        let key = match self.peek() {
            Some('\'') | Some('"') => {
                let s = self.string()?;
                if self.eat(":") {
                    return Ok(s);
                }
                s
            }
            Some(':') => {
                self.pos += 1;
                if matches!(self.peek(), Some('\'') | Some('"')) {
                    self.string()?
                } else {
                    self.ident()?
                }
            }
            _ => {
                let name = self.ident()?;
                if self.eat(":") && !self.rest().starts_with(':') {
                    return Ok(name);
                }
                return self.err(format!("expected `{name}:` (a symbol key)"));
            }
        };
        self.skip_ws();
        if self.eat("=>") {
            Ok(key)
        } else {
            self.err(format!("expected `=>` after the key {key:?}"))
        }
    }
}

fn snippet(s: &str) -> String {
    let line = s.lines().next().unwrap_or("");
    let cut: String = line.chars().take(40).collect();
    if cut.len() < line.len() {
        format!("{cut}...")
    } else {
        cut
    }
}
