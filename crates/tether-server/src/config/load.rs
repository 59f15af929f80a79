//! Building a [`Config`] from defaults, a file and `TETHER_*` environment variables.
//!
//! Everything is merged as a `serde_json::Value` tree first, so one walk can tell which keys
//! exist (unknown file keys are errors naming the key), which type an environment value must
//! parse to, and where an ambiguous variable name such as `TETHER_CLIENT_TOKEN_HMAC_SECRET_KEY`
//! lands. Only then is the tree deserialized, with the failing key's path in any error.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde_json::{Map, Value};

use super::{Config, ConfigError, Namespace, NamespaceOptions, TokenConfig};

/// Where `TETHER_*` overrides come from. Tests pass a map; the binary passes [`ProcessEnv`].
pub trait EnvSource {
    /// All variables as (name, value) pairs; names that are not `TETHER_*` are ignored.
    fn vars(&self) -> Vec<(String, String)>;
}

/// The process environment (variables that are not valid UTF-8 are skipped).
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn vars(&self) -> Vec<(String, String)> {
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect()
    }
}

impl EnvSource for HashMap<String, String> {
    fn vars(&self) -> Vec<(String, String)> {
        self.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

impl EnvSource for BTreeMap<String, String> {
    fn vars(&self) -> Vec<(String, String)> {
        self.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

impl EnvSource for [(&str, &str)] {
    fn vars(&self) -> Vec<(String, String)> {
        self.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }
}

/// Defaults + file + env, deserialized; not yet validated. Returns warnings beside it.
pub(super) fn load(
    path: Option<&Path>,
    env: &dyn EnvSource,
) -> Result<(Config, Vec<String>), ConfigError> {
    let defaults = to_tree(&Config::default())?;
    let namespace_template = to_tree(&Namespace::default())?;
    let mut tree = defaults.clone();
    if let Some(path) = path {
        let file = read_file(path)?;
        check_known_keys(&file, &defaults, &namespace_template, "")?;
        merge(&mut tree, file);
    }
    let mut origins = HashMap::new();
    let warnings = apply_env(&mut tree, &namespace_template, env, &mut origins)?;
    let config = from_tree(tree, &origins)?;
    Ok((config, warnings))
}

/// Variables that configure the binary itself rather than a config key.
const RESERVED_VARS: &[&str] = &["TETHER_CONFIG"];

const ENV_PREFIX: &str = "TETHER_";

/// The one list of named objects, addressed by name in variable names.
const NAMESPACES_PATH: &str = "channel.namespaces";

fn to_tree<T: serde::Serialize>(value: &T) -> Result<Value, ConfigError> {
    serde_json::to_value(value).map_err(|err| ConfigError::Invalid {
        key: String::new(),
        message: err.to_string(),
    })
}

fn read_file(path: &Path) -> Result<Value, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: shown.clone(),
        source,
    })?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let syntax = |message: String| ConfigError::Syntax {
        path: shown.clone(),
        message,
    };
    let value: Value = match ext.as_str() {
        "json" => serde_json::from_str(&text).map_err(|e| syntax(e.to_string()))?,
        "yaml" | "yml" => serde_yaml::from_str(&text).map_err(|e| syntax(e.to_string()))?,
        "toml" => toml::from_str(&text).map_err(|e| syntax(e.to_string()))?,
        _ => return Err(ConfigError::UnsupportedFormat { path: shown }),
    };
    match value {
        Value::Object(_) => Ok(value),
        // An empty YAML document is null: treat it as "no keys".
        Value::Null => Ok(Value::Object(Map::new())),
        _ => Err(syntax("the top level must be a map of keys".to_owned())),
    }
}

/// Every key of `file` must exist in `schema` (the defaults tree); elements of
/// `channel.namespaces` are checked against `namespace_template`.
fn check_known_keys(
    file: &Value,
    schema: &Value,
    namespace_template: &Value,
    path: &str,
) -> Result<(), ConfigError> {
    match (file, schema) {
        (Value::Object(file), Value::Object(schema)) => {
            for (key, value) in file {
                let child = join(path, key);
                let Some(schema_child) = schema.get(key) else {
                    return Err(ConfigError::UnknownKey { key: child });
                };
                check_known_keys(value, schema_child, namespace_template, &child)?;
            }
            Ok(())
        }
        (Value::Array(items), _) if path == NAMESPACES_PATH => {
            for (index, item) in items.iter().enumerate() {
                let child = format!("{path}[{index}]");
                if !item.is_object() {
                    return Err(ConfigError::Invalid {
                        key: child,
                        message: "must be a map of namespace options".to_owned(),
                    });
                }
                check_known_keys(item, namespace_template, namespace_template, &child)?;
            }
            Ok(())
        }
        // Leaves and lists of plain values: their type is checked on deserialization.
        _ => Ok(()),
    }
}

/// Maps merge key by key; anything else in `overlay` replaces what is in `base`.
fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => {
            for (key, value) in overlay {
                match base.get_mut(&key) {
                    Some(slot) => merge(slot, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (slot, value) => *slot = value,
    }
}

/// Applies `TETHER_*` variables onto `tree`. `origins` records which variable set which key,
/// so later type errors can name the variable.
fn apply_env(
    tree: &mut Value,
    namespace_template: &Value,
    env: &dyn EnvSource,
    origins: &mut HashMap<String, String>,
) -> Result<Vec<String>, ConfigError> {
    let mut vars: Vec<(String, String)> = env
        .vars()
        .into_iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX) && !RESERVED_VARS.contains(&name.as_str()))
        .collect();
    vars.sort();
    let mut warnings = Vec::new();

    // The namespace list goes first: it decides which names the per-namespace variables
    // can address.
    let list_var = env_name(NAMESPACES_PATH);
    if let Some((var, value)) = vars.iter().find(|(name, _)| *name == list_var) {
        set_namespace_list(tree, namespace_template, var, value)?;
        origins.insert(NAMESPACES_PATH.to_owned(), var.clone());
    }

    for (var, value) in &vars {
        if *var == list_var {
            continue;
        }
        let rest = &var[ENV_PREFIX.len()..];
        let Some(target) = resolve(tree, namespace_template, rest, &mut Vec::new()) else {
            warnings.push(format!("{var}: matches no config key, ignored"));
            continue;
        };
        let key = path_string(&target.path);
        let parsed =
            parse_env_value(&target.template, value).map_err(|message| ConfigError::Env {
                var: var.clone(),
                key: key.clone(),
                message,
            })?;
        set_at(tree, &target.path, parsed);
        origins.insert(key, var.clone());
    }
    Ok(warnings)
}

/// `TETHER_CHANNEL_NAMESPACES`: names separated by commas or spaces (each kept with its file
/// options, or created empty; unlisted ones are dropped), or a JSON list of names or of full
/// namespace objects.
fn set_namespace_list(
    tree: &mut Value,
    namespace_template: &Value,
    var: &str,
    value: &str,
) -> Result<(), ConfigError> {
    let env_error = |message: String| ConfigError::Env {
        var: var.to_owned(),
        key: NAMESPACES_PATH.to_owned(),
        message,
    };
    let trimmed = value.trim();
    let names: Vec<String> = if trimmed.starts_with('[') {
        let parsed: Value = serde_json::from_str(trimmed)
            .map_err(|e| env_error(format!("not a valid JSON list: {e}")))?;
        let Value::Array(items) = parsed else {
            return Err(env_error("not a JSON list".to_owned()));
        };
        if items.iter().all(Value::is_object) {
            let list = Value::Array(items);
            check_known_keys(&list, &Value::Null, namespace_template, NAMESPACES_PATH)?;
            set_at(tree, &namespaces_path(), list);
            return Ok(());
        }
        items
            .into_iter()
            .map(|item| match item {
                Value::String(name) => Ok(name),
                other => Err(env_error(format!(
                    "expected namespace names, found {other}"
                ))),
            })
            .collect::<Result<_, _>>()?
    } else {
        trimmed
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let existing = match get_at(tree, &namespaces_path()) {
        Some(Value::Array(items)) => items.clone(),
        _ => Vec::new(),
    };
    let list = names
        .into_iter()
        .map(|name| {
            existing
                .iter()
                .find(|ns| ns.get("name").and_then(Value::as_str) == Some(name.as_str()))
                .cloned()
                .unwrap_or_else(|| {
                    let mut map = Map::new();
                    map.insert("name".to_owned(), Value::String(name));
                    Value::Object(map)
                })
        })
        .collect();
    set_at(tree, &namespaces_path(), Value::Array(list));
    Ok(())
}

/// One step in the tree.
#[derive(Clone, Debug, PartialEq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// Where a variable lands, and a value of the key's type to parse against.
struct Target {
    path: Vec<Segment>,
    template: Value,
}

/// Finds the key that the upper-cased, underscore-joined `rest` names under `node`. Keys
/// contain underscores too, so every key that prefixes `rest` is tried, longest first.
fn resolve(
    node: &Value,
    namespace_template: &Value,
    rest: &str,
    path: &mut Vec<Segment>,
) -> Option<Target> {
    match node {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by_key(|k| std::cmp::Reverse(k.len()));
            for key in keys {
                let upper = key.to_ascii_uppercase();
                path.push(Segment::Key(key.clone()));
                if rest == upper {
                    // Exact hit. Objects and lists of objects are not set as a whole, except
                    // lists of plain values (comma-separated or JSON).
                    let found = match &map[key] {
                        Value::Object(_) => None,
                        Value::Array(_) if path_string(path) == NAMESPACES_PATH => None,
                        other => Some(Target {
                            path: path.clone(),
                            template: other.clone(),
                        }),
                    };
                    if found.is_some() {
                        return found;
                    }
                } else if let Some(tail) = rest.strip_prefix(upper.as_str())
                    && let Some(tail) = tail.strip_prefix('_')
                {
                    let child = &map[key];
                    let found = if path_string(path) == NAMESPACES_PATH {
                        resolve_namespace(child, namespace_template, tail, path)
                    } else {
                        resolve(child, namespace_template, tail, path)
                    };
                    if found.is_some() {
                        return found;
                    }
                }
                path.pop();
            }
            None
        }
        _ => None,
    }
}

/// `<NAME>_<OPTION>` under `channel.namespaces`: names may contain `-` and `_`, so the
/// longest name that fits wins.
fn resolve_namespace(
    list: &Value,
    namespace_template: &Value,
    rest: &str,
    path: &mut Vec<Segment>,
) -> Option<Target> {
    let Value::Array(items) = list else {
        return None;
    };
    let mut named: Vec<(usize, String)> = items
        .iter()
        .enumerate()
        .filter_map(|(i, ns)| Some((i, ns.get("name")?.as_str()?.to_owned())))
        .collect();
    named.sort_by_key(|(_, name)| std::cmp::Reverse(name.len()));
    for (index, name) in named {
        let upper = name.to_ascii_uppercase().replace('-', "_");
        let Some(tail) = rest
            .strip_prefix(upper.as_str())
            .and_then(|t| t.strip_prefix('_'))
        else {
            continue;
        };
        path.push(Segment::Index(index));
        if let Some(found) = resolve(namespace_template, namespace_template, tail, path)
            && found.path.last() != Some(&Segment::Key("name".to_owned()))
        {
            return Some(found);
        }
        path.pop();
    }
    None
}

/// Parses a variable's text as the type of `template`.
fn parse_env_value(template: &Value, raw: &str) -> Result<Value, String> {
    match template {
        Value::Bool(_) => match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(Value::Bool(true)),
            "false" | "0" | "no" | "off" | "" => Ok(Value::Bool(false)),
            _ => Err(format!("{raw:?} is not a boolean (true or false)")),
        },
        Value::Number(_) => serde_json::from_str::<serde_json::Number>(raw.trim())
            .map(Value::Number)
            .map_err(|_| format!("{raw:?} is not a number")),
        Value::Array(_) => {
            let trimmed = raw.trim();
            if trimmed.starts_with('[') {
                serde_json::from_str(trimmed).map_err(|e| format!("not a valid JSON list: {e}"))
            } else {
                Ok(Value::Array(
                    trimmed
                        .split(',')
                        .map(str::trim)
                        .filter(|item| !item.is_empty())
                        .map(|item| Value::String(item.to_owned()))
                        .collect(),
                ))
            }
        }
        Value::Object(_) => {
            serde_json::from_str(raw.trim()).map_err(|e| format!("not a valid JSON map: {e}"))
        }
        // An optional value (null by default): empty clears it, anything else is its text.
        Value::Null if raw.trim().is_empty() => Ok(Value::Null),
        Value::Null | Value::String(_) => Ok(Value::String(raw.to_owned())),
    }
}

/// Deserializes the merged tree; errors carry the failing key's path (and the variable that
/// set it, if any).
fn from_tree(tree: Value, origins: &HashMap<String, String>) -> Result<Config, ConfigError> {
    check_flattened(&tree, origins)?;
    serde_path_to_error::deserialize(tree).map_err(|err| path_error(&err, "", origins))
}

/// Serde loses the path inside `#[serde(flatten)]` fields, so those parts (namespace options,
/// the subscription token key set) are deserialized on their own first, for errors like
/// `channel.namespaces[0].history_size: invalid type ...`.
fn check_flattened(tree: &Value, origins: &HashMap<String, String>) -> Result<(), ConfigError> {
    if let Some(Value::Array(items)) = get_at(tree, &namespaces_path()) {
        for (index, item) in items.iter().enumerate() {
            let mut options = item.clone();
            if let Value::Object(map) = &mut options {
                map.remove("name");
            }
            let prefix = format!("{NAMESPACES_PATH}[{index}]");
            serde_path_to_error::deserialize::<_, NamespaceOptions>(options)
                .map_err(|err| path_error(&err, &prefix, origins))?;
        }
    }
    let token_path = [
        Segment::Key("client".to_owned()),
        Segment::Key("subscription_token".to_owned()),
    ];
    if let Some(token) = get_at(tree, &token_path) {
        let mut token = token.clone();
        if let Value::Object(map) = &mut token {
            map.remove("enabled");
        }
        serde_path_to_error::deserialize::<_, TokenConfig>(token)
            .map_err(|err| path_error(&err, "client.subscription_token", origins))?;
    }
    Ok(())
}

fn path_error(
    err: &serde_path_to_error::Error<serde_json::Error>,
    prefix: &str,
    origins: &HashMap<String, String>,
) -> ConfigError {
    let inner = err.path().to_string();
    let key = match (prefix.is_empty(), inner.as_str()) {
        (true, _) => inner.clone(),
        (false, ".") => prefix.to_owned(),
        (false, _) => format!("{prefix}.{inner}"),
    };
    let message = err.inner().to_string();
    match origins.get(&key) {
        Some(var) => ConfigError::Env {
            var: var.clone(),
            key,
            message,
        },
        None => ConfigError::Invalid { key, message },
    }
}

fn namespaces_path() -> Vec<Segment> {
    NAMESPACES_PATH
        .split('.')
        .map(|k| Segment::Key(k.to_owned()))
        .collect()
}

fn get_at<'a>(tree: &'a Value, path: &[Segment]) -> Option<&'a Value> {
    path.iter().try_fold(tree, |node, seg| match seg {
        Segment::Key(key) => node.get(key),
        Segment::Index(i) => node.get(i),
    })
}

/// Sets `value` at `path`, creating maps on the way. Paths come from [`resolve`], which only
/// walks nodes that exist, so a missing list element cannot occur; it is skipped if it does.
fn set_at(tree: &mut Value, path: &[Segment], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        *tree = value;
        return;
    };
    let mut node = tree;
    for seg in parents {
        node = match seg {
            Segment::Key(key) => {
                if !node.is_object() {
                    *node = Value::Object(Map::new());
                }
                let Value::Object(map) = node else { return };
                map.entry(key.clone())
                    .or_insert_with(|| Value::Object(Map::new()))
            }
            Segment::Index(i) => match node.get_mut(*i) {
                Some(child) => child,
                None => return,
            },
        };
    }
    match (last, node) {
        (Segment::Key(key), Value::Object(map)) => {
            map.insert(key.clone(), value);
        }
        (Segment::Index(i), Value::Array(items)) => {
            if let Some(slot) = items.get_mut(*i) {
                *slot = value;
            }
        }
        _ => {}
    }
}

/// `a.b[1].c` — the same form serde_path_to_error prints.
fn path_string(path: &[Segment]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Segment::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Index(i) => {
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
        }
    }
    out
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// `channel.namespaces` -> `TETHER_CHANNEL_NAMESPACES`.
fn env_name(path: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        path.replace('.', "_").to_ascii_uppercase()
    )
}
