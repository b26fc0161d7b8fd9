//! Reading `config/gitlab.yml` (source installs).

use super::{find_jwt, Found, Lit};

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

pub(super) fn from_gitlab_yml(text: &str) -> Result<Found, String> {
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
