//! Building a [`Config`] from defaults, a file and `TETHER_*` environment variables.
//!
//! Everything is merged as a `serde_json::Value` tree first, so one walk can tell which keys
//! exist (unknown file keys are errors naming the key), which type an environment value must
//! parse to, and where an ambiguous variable name such as `TETHER_CLIENT_TOKEN_HMAC_SECRET_KEY`
//! lands. Only then is the tree deserialized, with the failing key's path in any error.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde_json::{Map, Value};

use super::{
    Config, ConfigError, ConsumerConfig, NamedProxy, Namespace, NamespaceOptions, ProxyConfig,
    RpcNamespace, RpcNamespaceOptions, StatusToCodeTransform, TokenConfig,
};

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
    let templates = Templates::new()?;
    let mut tree = defaults.clone();
    if let Some(path) = path {
        let file = read_file(path)?;
        check_known_keys(&file, &defaults, &templates, "")?;
        merge(&mut tree, file);
    }
    let mut origins = HashMap::new();
    let warnings = apply_env(&mut tree, &templates, env, &mut origins)?;
    let config = from_tree(tree, &origins)?;
    Ok((config, warnings))
}

/// Variables that configure the binary itself rather than a config key.
const RESERVED_VARS: &[&str] = &["TETHER_CONFIG"];

const ENV_PREFIX: &str = "TETHER_";

/// Channel namespaces: a list of named objects.
const NAMESPACES_PATH: &str = "channel.namespaces";

/// RPC namespaces: a list of named objects.
const RPC_NAMESPACES_PATH: &str = "rpc.namespaces";

/// Named proxies: a list of named objects.
const PROXIES_PATH: &str = "proxies";

/// The lists of named objects. Their elements are addressed by name in variable names
/// (`TETHER_PROXIES_<NAME>_TIMEOUT`), and the list itself is set by one variable
/// (`TETHER_PROXIES`) holding names or a JSON list of objects.
const NAMED_LISTS: [&str; 4] = [
    NAMESPACES_PATH,
    RPC_NAMESPACES_PATH,
    PROXIES_PATH,
    CONSUMERS_PATH,
];

/// Async consumers: a list of named objects.
const CONSUMERS_PATH: &str = "consumers";

/// A list of objects inside every proxy object; not named, set as a whole (JSON).
const TRANSFORMS_KEY: &str = "status_to_code_transforms";

/// Maps whose keys are data (header and metadata names), not config keys: any key is
/// accepted, and a variable sets the whole map as a JSON object. Also the options of
/// Centrifugo's consumer types that tether does not run (accepted only while disabled).
const FREE_FORM_MAPS: [&str; 6] = [
    "static_headers",
    "static_metadata",
    "kafka",
    "google_pub_sub",
    "aws_sqs",
    "azure_service_bus",
];

/// Default-filled trees of the objects that sit in lists, to check keys and resolve
/// variables against.
struct Templates {
    namespace: Value,
    rpc_namespace: Value,
    proxy: Value,
    consumer: Value,
    transform: Value,
}

impl Templates {
    fn new() -> Result<Self, ConfigError> {
        Ok(Self {
            namespace: to_tree(&Namespace::default())?,
            rpc_namespace: to_tree(&RpcNamespace::default())?,
            proxy: to_tree(&NamedProxy::default())?,
            consumer: to_tree(&ConsumerConfig::default())?,
            transform: to_tree(&StatusToCodeTransform::default())?,
        })
    }

    /// The template of the elements of the list at `path`, and what an element is (for
    /// messages); `None` for lists of plain values.
    fn element(&self, path: &str) -> Option<(&Value, &'static str)> {
        match path {
            NAMESPACES_PATH => Some((&self.namespace, "namespace options")),
            RPC_NAMESPACES_PATH => Some((&self.rpc_namespace, "rpc namespace options")),
            PROXIES_PATH => Some((&self.proxy, "proxy options")),
            CONSUMERS_PATH => Some((&self.consumer, "consumer options")),
            _ if path.ends_with(TRANSFORMS_KEY) => Some((&self.transform, "transform options")),
            _ => None,
        }
    }

    /// The element template when `path` is a list of named objects.
    fn named(&self, path: &str) -> Option<&Value> {
        if NAMED_LISTS.contains(&path) {
            self.element(path).map(|(template, _)| template)
        } else {
            None
        }
    }
}

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

/// Every key of `file` must exist in `schema` (the defaults tree); elements of lists of
/// objects (namespaces, proxies, transforms) are checked against their template, and the
/// keys of free-form maps (`http.static_headers`) are not checked.
fn check_known_keys(
    file: &Value,
    schema: &Value,
    templates: &Templates,
    path: &str,
) -> Result<(), ConfigError> {
    match (file, schema) {
        (Value::Object(file), Value::Object(schema)) => {
            for (key, value) in file {
                let child = join(path, key);
                let Some(schema_child) = schema.get(key) else {
                    return Err(ConfigError::UnknownKey { key: child });
                };
                if FREE_FORM_MAPS.contains(&key.as_str()) {
                    continue;
                }
                check_known_keys(value, schema_child, templates, &child)?;
            }
            Ok(())
        }
        (Value::Array(items), _) => {
            let Some((template, what)) = templates.element(path) else {
                // A list of plain values: its type is checked on deserialization.
                return Ok(());
            };
            for (index, item) in items.iter().enumerate() {
                let child = format!("{path}[{index}]");
                if !item.is_object() {
                    return Err(ConfigError::Invalid {
                        key: child,
                        message: format!("must be a map of {what}"),
                    });
                }
                check_known_keys(item, template, templates, &child)?;
            }
            Ok(())
        }
        // Leaves: their type is checked on deserialization.
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
    templates: &Templates,
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

    // The named lists go first: they decide which names the per-element variables can
    // address.
    let list_vars: Vec<String> = NAMED_LISTS.iter().map(|path| env_name(path)).collect();
    for (path, list_var) in NAMED_LISTS.iter().zip(&list_vars) {
        if let Some((var, value)) = vars.iter().find(|(name, _)| name == list_var) {
            set_named_list(tree, templates, path, var, value)?;
            origins.insert((*path).to_owned(), var.clone());
        }
    }

    for (var, value) in &vars {
        if list_vars.contains(var) {
            continue;
        }
        let rest = &var[ENV_PREFIX.len()..];
        let Some(target) = resolve(tree, templates, rest, &mut Vec::new()) else {
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

/// `TETHER_CHANNEL_NAMESPACES`, `TETHER_RPC_NAMESPACES`, `TETHER_PROXIES`: names separated
/// by commas or spaces (each kept with its file options, or created with defaults; unlisted
/// ones are dropped), or a JSON list of names or of full objects.
fn set_named_list(
    tree: &mut Value,
    templates: &Templates,
    list_path: &str,
    var: &str,
    value: &str,
) -> Result<(), ConfigError> {
    let env_error = |message: String| ConfigError::Env {
        var: var.to_owned(),
        key: list_path.to_owned(),
        message,
    };
    let path = key_path(list_path);
    let trimmed = value.trim();
    let names: Vec<String> = if trimmed.starts_with('[') {
        let parsed: Value = serde_json::from_str(trimmed)
            .map_err(|e| env_error(format!("not a valid JSON list: {e}")))?;
        let Value::Array(items) = parsed else {
            return Err(env_error("not a JSON list".to_owned()));
        };
        if items.iter().all(Value::is_object) {
            let list = Value::Array(items);
            check_known_keys(&list, &Value::Null, templates, list_path)?;
            set_at(tree, &path, list);
            return Ok(());
        }
        items
            .into_iter()
            .map(|item| match item {
                Value::String(name) => Ok(name),
                other => Err(env_error(format!("expected names, found {other}"))),
            })
            .collect::<Result<_, _>>()?
    } else {
        trimmed
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let existing = match get_at(tree, &path) {
        Some(Value::Array(items)) => items.clone(),
        _ => Vec::new(),
    };
    let list = names
        .into_iter()
        .map(|name| {
            existing
                .iter()
                .find(|item| item.get("name").and_then(Value::as_str) == Some(name.as_str()))
                .cloned()
                .unwrap_or_else(|| {
                    let mut map = Map::new();
                    map.insert("name".to_owned(), Value::String(name));
                    Value::Object(map)
                })
        })
        .collect();
    set_at(tree, &path, Value::Array(list));
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
    templates: &Templates,
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
                    // Exact hit. Objects and lists of named objects are not set as a whole,
                    // except free-form maps (JSON); other lists are comma-separated or JSON.
                    let found = match &map[key] {
                        Value::Object(_) if !FREE_FORM_MAPS.contains(&key.as_str()) => None,
                        Value::Array(_) if templates.named(&path_string(path)).is_some() => None,
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
                    let found = match templates.named(&path_string(path)) {
                        Some(template) => resolve_named(child, template, templates, tail, path),
                        None => resolve(child, templates, tail, path),
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

/// `<NAME>_<OPTION>` under a list of named objects: names may contain `-`, `_` and `.`
/// (written `_` in variable names), so the longest name that fits wins.
fn resolve_named(
    list: &Value,
    template: &Value,
    templates: &Templates,
    rest: &str,
    path: &mut Vec<Segment>,
) -> Option<Target> {
    let Value::Array(items) = list else {
        return None;
    };
    let mut named: Vec<(usize, String)> = items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| Some((i, item.get("name")?.as_str()?.to_owned())))
        .collect();
    named.sort_by_key(|(_, name)| std::cmp::Reverse(name.len()));
    for (index, name) in named {
        let upper: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        let Some(tail) = rest
            .strip_prefix(upper.as_str())
            .and_then(|t| t.strip_prefix('_'))
        else {
            continue;
        };
        path.push(Segment::Index(index));
        if let Some(found) = resolve(template, templates, tail, path)
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

/// Serde loses the path inside `#[serde(flatten)]` fields, so those parts (namespace and
/// RPC namespace options, proxy objects beside `name` or `enabled`, the subscription token
/// key set) are deserialized on their own first, for errors like
/// `channel.namespaces[0].history_size: invalid type ...`.
fn check_flattened(tree: &Value, origins: &HashMap<String, String>) -> Result<(), ConfigError> {
    check_named_items::<NamespaceOptions>(tree, NAMESPACES_PATH, origins)?;
    check_named_items::<RpcNamespaceOptions>(tree, RPC_NAMESPACES_PATH, origins)?;
    check_named_items::<ProxyConfig>(tree, PROXIES_PATH, origins)?;
    for key in ["client.proxy.connect", "client.proxy.refresh"] {
        check_beside::<ProxyConfig>(tree, key, "enabled", origins)?;
    }
    check_beside::<TokenConfig>(tree, "client.subscription_token", "enabled", origins)
}

/// Deserializes each element of the list at `list_path` without its `name` as `T`.
fn check_named_items<T: serde::de::DeserializeOwned>(
    tree: &Value,
    list_path: &str,
    origins: &HashMap<String, String>,
) -> Result<(), ConfigError> {
    if let Some(Value::Array(items)) = get_at(tree, &key_path(list_path)) {
        for (index, item) in items.iter().enumerate() {
            let mut options = item.clone();
            if let Value::Object(map) = &mut options {
                map.remove("name");
            }
            let prefix = format!("{list_path}[{index}]");
            serde_path_to_error::deserialize::<_, T>(options)
                .map_err(|err| path_error(&err, &prefix, origins))?;
        }
    }
    Ok(())
}

/// Deserializes the object at `key` without its `beside` key as `T`.
fn check_beside<T: serde::de::DeserializeOwned>(
    tree: &Value,
    key: &str,
    beside: &str,
    origins: &HashMap<String, String>,
) -> Result<(), ConfigError> {
    if let Some(value) = get_at(tree, &key_path(key)) {
        let mut value = value.clone();
        if let Value::Object(map) = &mut value {
            map.remove(beside);
        }
        serde_path_to_error::deserialize::<_, T>(value)
            .map_err(|err| path_error(&err, key, origins))?;
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

/// `a.b.c` as segments (keys only).
fn key_path(dotted: &str) -> Vec<Segment> {
    dotted
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
