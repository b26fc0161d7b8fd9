//! `jwt-gate import-gitlab PATH`: read GitLab's own JWT provider settings and print the
//! equivalent `[provider]` TOML.
//!
//! Two sources:
//! - `config/gitlab.yml` (source installs): `production.omniauth.providers`, the entry named
//!   `jwt`; `production.gitlab.relative_url_root` moves the callback path.
//! - `/etc/gitlab/gitlab.rb` (Omnibus): the `gitlab_rails['omniauth_providers'] = [...]`
//!   assignment, read with a parser for the subset of Ruby literal syntax GitLab's docs use
//!   (hashes with symbol or string keys, `key: value` and `=>`, strings, numbers, `true`,
//!   `false`, `nil`, arrays, nested hashes, comments, and `File.read('path')` for a key
//!   file). Everything else is an error naming its line. The rest of gitlab.rb is not
//!   parsed; `external_url`'s path moves the callback path.

use std::fmt::Write as _;
use std::path::Path;

/// A literal value, from either source.
#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Nil,
    Arr(Vec<Lit>),
    Hash(Vec<(String, Lit)>),
    /// `File.read('path')`: the key lives in a file.
    FileRead(String),
}

impl Lit {
    fn get(&self, key: &str) -> Option<&Lit> {
        match self {
            Lit::Hash(pairs) => pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    fn kind(&self) -> &'static str {
        match self {
            Lit::Str(_) => "a string",
            Lit::Int(_) => "an integer",
            Lit::Float(_) => "a number",
            Lit::Bool(_) => "a boolean",
            Lit::Nil => "nil",
            Lit::Arr(_) => "an array",
            Lit::Hash(_) => "a hash",
            Lit::FileRead(_) => "File.read(...)",
        }
    }
}

/// What was found: the provider entry, where, and the relative URL root.
#[derive(Debug)]
struct Found {
    entry: Lit,
    relative_root: Option<String>,
    notes: Vec<String>,
}

/// Read `path` (gitlab.yml or gitlab.rb, told apart by name and content) and render the
/// gate's TOML for its JWT provider.
pub fn import(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let ruby = name.ends_with(".rb")
        || (!name.ends_with(".yml") && !name.ends_with(".yaml") && text.contains("gitlab_rails["));
    let found = if ruby {
        from_gitlab_rb(&text)
    } else {
        from_gitlab_yml(&text)
    }
    .map_err(|e| format!("{}: {e}", path.display()))?;
    render(&found, &path.display().to_string())
}

// ---------------------------------------------------------------- gitlab.yml

fn yaml_to_lit(y: &yaml_rust2::Yaml) -> Result<Lit, String> {
    use yaml_rust2::Yaml;
    Ok(match y {
        Yaml::String(s) => Lit::Str(s.clone()),
        Yaml::Integer(i) => Lit::Int(*i),
        Yaml::Real(r) => Lit::Float(r.parse().map_err(|_| format!("bad number {r}"))?),
        Yaml::Boolean(b) => Lit::Bool(*b),
        Yaml::Null => Lit::Nil,
        Yaml::Array(a) => Lit::Arr(a.iter().map(yaml_to_lit).collect::<Result<_, _>>()?),
        Yaml::Hash(h) => Lit::Hash(
            h.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) => s.clone(),
                        Yaml::Integer(i) => i.to_string(),
                        Yaml::Boolean(b) => b.to_string(),
                        _ => return Err("a mapping key is not a scalar".to_string()),
                    };
                    Ok((key, yaml_to_lit(v)?))
                })
                .collect::<Result<_, _>>()?,
        ),
        Yaml::Alias(_) | Yaml::BadValue => return Err("unresolved alias".to_string()),
    })
}

fn from_gitlab_yml(text: &str) -> Result<Found, String> {
    let docs = yaml_rust2::YamlLoader::load_from_str(text)
        .map_err(|e| format!("line {}: not valid YAML: {}", e.marker().line(), e.info()))?;
    let doc = docs.first().ok_or("the file is empty")?;
    let doc = yaml_to_lit(doc)?;
    let production = doc
        .get("production")
        .ok_or("no `production:` section (is this gitlab.yml?)")?;
    let mut notes = Vec::new();
    let omniauth = production
        .get("omniauth")
        .ok_or("no production.omniauth section")?;
    if omniauth.get("enabled") == Some(&Lit::Bool(false)) {
        notes.push("production.omniauth.enabled is false in this file: GitLab does not offer the JWT login until it is true".to_string());
    }
    let providers = omniauth
        .get("providers")
        .ok_or("no production.omniauth.providers list")?;
    let entry = find_jwt(providers, "production.omniauth.providers")?;
    let relative_root = production
        .get("gitlab")
        .and_then(|g| g.get("relative_url_root"))
        .and_then(|r| match r {
            Lit::Str(s) => Some(s.clone()),
            _ => None,
        });
    Ok(Found {
        entry,
        relative_root,
        notes,
    })
}

fn find_jwt(providers: &Lit, what: &str) -> Result<Lit, String> {
    let Lit::Arr(list) = providers else {
        return Err(format!("{what} is {}, not a list", providers.kind()));
    };
    let jwt: Vec<&Lit> = list
        .iter()
        .filter(|p| matches!(p.get("name"), Some(Lit::Str(n)) if n == "jwt"))
        .collect();
    match jwt.as_slice() {
        [] => Err(format!(
            "{what} has no provider named jwt (found: {})",
            list.iter()
                .filter_map(|p| match p.get("name") {
                    Some(Lit::Str(n)) => Some(n.as_str()),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join(", ")
        )),
        [one] => Ok((*one).clone()),
        _ => Err(format!(
            "{what} has {} providers named jwt; GitLab would register only one",
            jwt.len()
        )),
    }
}

// ---------------------------------------------------------------- gitlab.rb

fn from_gitlab_rb(text: &str) -> Result<Found, String> {
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

// ---------------------------------------------------------------- TOML

/// The provider keys GitLab's JWT strategy reads; the rest of `args` means nothing to it.
const KNOWN_ARGS: &[&str] = &[
    "secret",
    "algorithm",
    "uid_claim",
    "required_claims",
    "info_map",
    "auth_url",
    "valid_within",
];

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn toml_key(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        k.to_string()
    } else {
        toml_str(k)
    }
}

/// What the gate's own config check says of an imported `[provider]` (an unreadable
/// `secret_file` is left out: the file lives on the gate's machine, not necessarily here).
pub fn problems(imported: &str) -> Vec<String> {
    let text = format!("[upstream]\nurl = \"http://127.0.0.1:8181\"\n{imported}");
    match crate::Config::from_toml_str(&text) {
        Ok(_) => Vec::new(),
        Err(e) => {
            e.0.into_iter()
                .filter(|m| !m.starts_with("provider.secret_file"))
                .collect()
        }
    }
}

fn render(found: &Found, source: &str) -> Result<String, String> {
    let args = found
        .entry
        .get("args")
        .ok_or("the jwt provider has no args")?;
    let Lit::Hash(pairs) = args else {
        return Err(format!(
            "the jwt provider's args is {}, not a hash",
            args.kind()
        ));
    };
    let mut errs = Vec::new();
    let mut out = String::new();
    let mut comments = found.notes.clone();
    let mut body = String::new();
    let want_str = |k: &str, v: &Lit, errs: &mut Vec<String>| match v {
        Lit::Str(s) => Some(s.clone()),
        Lit::Int(i) => Some(i.to_string()),
        other => {
            errs.push(format!("args.{k} is {}, expected a string", other.kind()));
            None
        }
    };
    let mut seen_valid_within = false;
    for (k, v) in pairs {
        match k.as_str() {
            "secret" => match v {
                Lit::FileRead(path) => {
                    let _ = writeln!(body, "secret_file = {}", toml_str(path));
                }
                v => {
                    if let Some(s) = want_str(k, v, &mut errs) {
                        let _ = writeln!(body, "secret = {}", toml_str(&s));
                        comments.push("the secret is inline, as it was in GitLab's file: consider moving it to a file and `secret_file`".to_string());
                    }
                }
            },
            "algorithm" | "uid_claim" | "auth_url" => {
                if let Some(s) = want_str(k, v, &mut errs) {
                    let _ = writeln!(body, "{k} = {}", toml_str(&s));
                }
            }
            "required_claims" => match v {
                Lit::Arr(items) => {
                    let names: Vec<String> = items
                        .iter()
                        .filter_map(|i| want_str("required_claims[]", i, &mut errs))
                        .map(|s| toml_str(&s))
                        .collect();
                    let _ = writeln!(body, "required_claims = [{}]", names.join(", "));
                }
                other => errs.push(format!(
                    "args.required_claims is {}, expected an array",
                    other.kind()
                )),
            },
            "info_map" => match v {
                Lit::Hash(map) => {
                    let items: Vec<String> = map
                        .iter()
                        .filter_map(|(mk, mv)| {
                            want_str(&format!("info_map.{mk}"), mv, &mut errs)
                                .map(|s| format!("{} = {}", toml_key(mk), toml_str(&s)))
                        })
                        .collect();
                    let _ = writeln!(body, "info_map = {{ {} }}", items.join(", "));
                }
                other => errs.push(format!(
                    "args.info_map is {}, expected a hash",
                    other.kind()
                )),
            },
            "valid_within" => match v {
                Lit::Nil => {}
                Lit::Int(i) => {
                    seen_valid_within = true;
                    let _ = writeln!(body, "valid_within = {i}");
                }
                Lit::Float(f) if f.fract() == 0.0 && *f >= 0.0 => {
                    seen_valid_within = true;
                    let _ = writeln!(body, "valid_within = {}", *f as i64);
                }
                other => errs.push(format!(
                    "args.valid_within is {}, expected a whole number of seconds",
                    other.kind()
                )),
            },
            other if !KNOWN_ARGS.contains(&other) => {
                comments.push(format!(
                    "args.{other} is not a setting of GitLab's JWT provider: not imported"
                ));
            }
            _ => {}
        }
    }
    if !pairs.iter().any(|(k, _)| k == "secret") {
        errs.push("args.secret is missing: GitLab cannot verify a token without it".to_string());
    }
    if !errs.is_empty() {
        return Err(errs.join("\n"));
    }
    if !seen_valid_within {
        comments.push("valid_within is unset in GitLab (no iat check): the gate enforces 300 s unless you set it here".to_string());
    }
    let _ = writeln!(
        out,
        "# [provider] imported by `jwt-gate import-gitlab` from {source}"
    );
    for c in &comments {
        let _ = writeln!(out, "# note: {c}");
    }
    let _ = writeln!(out, "[provider]\n{body}");
    if let Some(root) = &found.relative_root {
        let _ = writeln!(
            out,
            "[gate]\n# GitLab is served under {root}\ncallback_path = {}\nsign_in_path = {}",
            toml_str(&format!("{root}/users/auth/jwt/callback")),
            toml_str(&format!("{root}/users/sign_in"))
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rb(text: &str) -> Result<Lit, String> {
        from_gitlab_rb(text).map(|f| f.entry)
    }

    #[test]
    fn ruby_literals_in_every_spelling_the_docs_use() {
        let text = r#"
external_url 'https://gitlab.example.com/git/'
# gitlab_rails['omniauth_providers'] = [ { name: "commented" } ]
gitlab_rails['omniauth_providers'] = [
  { name: "saml" },
  { "name" => "jwt",
    :label => 'Provider name', # the button
    args: {
      secret: "line\nbreak \"q\"",
      'algorithm': 'HS256',
      uid_claim: :email,
      required_claims: ["name", 'email',],
      info_map: { name: "name", "email" => "email" },
      valid_within: 3_600, # 1 hour
      enabled: true, skew: nil, ratio: 1.5, neg: -2,
    }
  }
]   # end
"#;
        let found = from_gitlab_rb(text).unwrap();
        assert_eq!(found.relative_root.as_deref(), Some("/git"));
        let args = found.entry.get("args").unwrap();
        assert_eq!(
            args.get("secret"),
            Some(&Lit::Str("line\nbreak \"q\"".into()))
        );
        assert_eq!(args.get("algorithm"), Some(&Lit::Str("HS256".into())));
        assert_eq!(args.get("uid_claim"), Some(&Lit::Str("email".into())));
        assert_eq!(args.get("valid_within"), Some(&Lit::Int(3600)));
        assert_eq!(args.get("skew"), Some(&Lit::Nil));
        assert_eq!(args.get("ratio"), Some(&Lit::Float(1.5)));
        assert_eq!(args.get("neg"), Some(&Lit::Int(-2)));
        assert_eq!(
            args.get("required_claims"),
            Some(&Lit::Arr(vec![
                Lit::Str("name".into()),
                Lit::Str("email".into())
            ]))
        );
        assert_eq!(
            found.entry.get("label"),
            Some(&Lit::Str("Provider name".into()))
        );
    }

    #[test]
    fn single_quotes_keep_backslashes_and_file_read_is_a_key_file() {
        let e = rb("gitlab_rails['omniauth_providers'] = [{ name: 'jwt', args: { secret: File.read('/etc/gitlab/jwt.pem'), x: 'a\\nb\\'c' } }]\n").unwrap();
        let args = e.get("args").unwrap();
        assert_eq!(
            args.get("secret"),
            Some(&Lit::FileRead("/etc/gitlab/jwt.pem".into()))
        );
        assert_eq!(args.get("x"), Some(&Lit::Str("a\\nb'c".into())));
    }

    #[test]
    fn ruby_code_is_an_error_naming_its_line() {
        for (text, line, what) in [
            (
                "gitlab_rails['omniauth_providers'] = [\n  { name: 'jwt',\n    args: { secret: ENV['JWT_SECRET'] } }\n]\n",
                3,
                "Ruby code",
            ),
            (
                "gitlab_rails['omniauth_providers'] = [\n{ name: \"jwt\", args: { secret: \"#{x}\" } }]\n",
                2,
                "interpolation",
            ),
            (
                "gitlab_rails['omniauth_providers'] = [\n{ name: 'jwt'\n  args: {} }]\n",
                3,
                "expected `,`",
            ),
            (
                "x = 1\ngitlab_rails['omniauth_providers'] = [\n{ name: 'jwt', args: { secret: 'abc } }]\n",
                3,
                "never closed",
            ),
            (
                "gitlab_rails['omniauth_providers'] = [{ name: 'jwt', args: {} }].freeze\n",
                1,
                "after the providers array",
            ),
        ] {
            let e = rb(text).unwrap_err();
            assert!(e.starts_with(&format!("line {line}: ")), "{e}");
            assert!(e.contains(what), "{e}");
        }
    }

    #[test]
    fn missing_or_duplicate_jwt_providers_are_errors() {
        assert!(rb("# gitlab_rails['omniauth_providers'] = []\n")
            .unwrap_err()
            .contains("no gitlab_rails"));
        assert!(
            rb("gitlab_rails['omniauth_providers'] = [{ name: 'saml' }]\n")
                .unwrap_err()
                .contains("found: saml")
        );
        assert!(
            rb("gitlab_rails['omniauth_providers'] = [{ name: 'jwt' }, { name: 'jwt' }]\n")
                .unwrap_err()
                .contains("2 providers named jwt")
        );
        // deep nesting is refused, not a stack overflow
        let deep = format!(
            "gitlab_rails['omniauth_providers'] = {}{}\n",
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert!(rb(&deep).unwrap_err().contains("nested too deeply"));
    }

    #[test]
    fn gitlab_yml_with_anchors() {
        let text = r#"
production: &base
  gitlab:
    host: localhost
    relative_url_root: /gitlab
  omniauth:
    enabled: true
    providers:
      - { name: 'jwt',
          label: 'Provider name',
          args: {
            secret: 'YOUR_APP_SECRET',
            algorithm: 'HS256',
            uid_claim: 'email',
            required_claims: ['name', 'email'],
            info_map: { name: 'name', email: 'email' },
            auth_url: 'https://example.com/',
            valid_within: 3600
          }
        }
development:
  <<: *base
"#;
        let found = from_gitlab_yml(text).unwrap();
        assert_eq!(found.relative_root.as_deref(), Some("/gitlab"));
        let toml = render(&found, "gitlab.yml").unwrap();
        assert!(toml.contains("valid_within = 3600\n"), "{toml}");
        assert!(
            toml.contains("callback_path = \"/gitlab/users/auth/jwt/callback\""),
            "{toml}"
        );
        assert!(toml.contains("info_map = { name = \"name\", email = \"email\" }"));
        let e = from_gitlab_yml("production:\n  omniauth:\n    providers: [\n").unwrap_err();
        assert!(e.starts_with("line "), "{e}");
    }
}
