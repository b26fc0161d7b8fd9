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

mod render;
mod ruby;
mod yaml;

use std::path::Path;

pub use render::problems;
use render::render;
use ruby::from_gitlab_rb;
use yaml::from_gitlab_yml;

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
    pub(super) fn get(&self, key: &str) -> Option<&Lit> {
        match self {
            Lit::Hash(pairs) => pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    pub(super) fn kind(&self) -> &'static str {
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
    pub(super) entry: Lit,
    pub(super) relative_root: Option<String>,
    pub(super) notes: Vec<String>,
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
