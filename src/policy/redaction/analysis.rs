//! What the redaction rule can read, found from the policy set's syntax tree.
//!
//! regorus hands every module's AST as JSON ([`regorus::Engine::get_ast_as_json`]). A rule is
//! known by its path (`data.<package>.<head>`, the head's ref up to its first variable part). The
//! walk starts at the redaction rule and follows every reference its heads and bodies make:
//! `data.…` (to every rule whose path is a prefix of the reference or extends it, so
//! `data.reflex.audit.redact`, `data.reflex.audit` and `data.reflex[x]` all count), bare names of
//! rules of the same package, and `import` aliases. On the way it collects each `input…`
//! reference and each call of a builtin whose value is not a function of its arguments
//! (`time.now_ns()`, …).
//!
//! It over-approximates on purpose: a local variable named like a rule of its package counts as
//! a reference to that rule, a reference through a variable index reaches every rule under the
//! known prefix, and a `with` modifier is not taken into account.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use serde_json::Value;

use super::{Reads, RedactionRule};
use crate::policy::PolicyError;

/// Builtins whose value does not depend only on their arguments: a redaction rule calling one
/// is as impure as one reading `input.context.now`.
const IMPURE_BUILTINS: &[&str] = &[
    "time.now_ns",
    "rand.intn",
    "uuid.rfc4122",
    "opa.runtime",
    "http.send",
    "net.lookup_ip_addr",
];

/// Checks that the rule `entry` (`data.<package>.<rule>`) of the modules in `ast` (regorus's
/// JSON) reads only `input.event`, and finds which of its fields.
pub(crate) fn analyse(ast: &str, entry: &str, dir: &Path) -> Result<RedactionRule, PolicyError> {
    let bad_entry = || PolicyError::BadRedaction {
        rule: entry.to_owned(),
    };
    let target: Vec<String> = entry
        .strip_prefix("data.")
        .ok_or_else(bad_entry)?
        .split('.')
        .map(str::to_owned)
        .collect();
    if target.iter().any(|s| s.is_empty()) {
        return Err(bad_entry());
    }
    let ast: Value = serde_json::from_str(ast).map_err(|e| PolicyError::Analysis {
        rule: entry.to_owned(),
        message: e.to_string(),
    })?;
    let policies = ast.as_array().ok_or_else(|| PolicyError::Analysis {
        rule: entry.to_owned(),
        message: "the syntax tree is not a list of modules".into(),
    })?;
    let mut graph = Graph::default();
    for policy in policies {
        graph
            .add_module(policy)
            .map_err(|message| PolicyError::Analysis {
                rule: entry.to_owned(),
                message,
            })?;
    }
    let mut walk = Walk::new(&graph);
    walk.reach(&target);
    if walk.queue.is_empty() {
        let mut packages: Vec<String> = graph
            .modules
            .iter()
            .map(|m| format!("data.{}", m.package.join(".")))
            .collect();
        packages.sort();
        packages.dedup();
        return Err(PolicyError::NoRedaction {
            rule: entry.to_owned(),
            dir: dir.to_owned(),
            found: packages.join(", "),
        });
    }
    while let Some(rule) = walk.queue.pop() {
        walk.rule(rule);
        if let Some(v) = walk.violation.take() {
            let rule = &graph.rules[v.rule];
            let file = dir.join(&graph.modules[rule.module].file);
            return Err(PolicyError::ImpureRedaction {
                rule: entry.to_owned(),
                reference: v.reference,
                through: format!("data.{}", rule.path.join(".")),
                location: match v.line {
                    Some(line) => format!("{}:{line}", file.display()),
                    None => file.display().to_string(),
                },
            });
        }
    }
    Ok(walk.finish(entry))
}

/// One module: where it is, its package and its import aliases.
#[derive(Debug)]
struct Module {
    file: String,
    package: Vec<String>,
    /// Alias → the imported path, root (`data` or `input`) first.
    imports: HashMap<String, Vec<String>>,
}

/// One rule definition (a rule with several definitions appears once per definition).
#[derive(Debug)]
struct Rule<'a> {
    /// Package segments followed by the head's static path.
    path: Vec<String>,
    module: usize,
    ast: &'a Value,
}

#[derive(Debug, Default)]
struct Graph<'a> {
    modules: Vec<Module>,
    rules: Vec<Rule<'a>>,
    /// Package → the first segment of each rule head it defines (the names a body may use bare).
    names: HashMap<Vec<String>, BTreeSet<String>>,
}

impl<'a> Graph<'a> {
    fn add_module(&mut self, policy: &'a Value) -> Result<(), String> {
        let file = policy["source"]["file"]
            .as_str()
            .ok_or("a module has no file name")?
            .to_owned();
        let contents = policy["source"]["contents"].as_str().unwrap_or_default();
        let ast = &policy["ast"];
        let package = Chain::of(&ast["package"]["refr"])
            .filter(|c| !c.dynamic)
            .map(|c| c.full())
            .ok_or_else(|| format!("{file}: the package is not a plain path"))?;
        let mut imports = HashMap::new();
        for import in ast["imports"].as_array().into_iter().flatten() {
            let Some(chain) = Chain::of(&import["refr"]).filter(|c| !c.dynamic) else {
                continue;
            };
            let path = chain.full();
            if !matches!(path.first().map(String::as_str), Some("data" | "input")) {
                continue; // `future.keywords`, `rego.v1`
            }
            let alias = match import.get("as") {
                Some(span) => span_text(contents, span)
                    .ok_or_else(|| format!("{file}: an import alias has no text"))?
                    .to_owned(),
                None => path.last().cloned().unwrap_or_default(),
            };
            imports.insert(alias, path);
        }
        let module = self.modules.len();
        for rule in ast["rules"].as_array().into_iter().flatten() {
            let refr = match (rule.get("Spec"), rule.get("Default")) {
                (Some(spec), _) => spec["head"]
                    .as_object()
                    .and_then(|head| head.values().next())
                    .map(|head| &head["refr"]),
                (None, Some(default)) => Some(&default["refr"]),
                (None, None) => None,
            };
            let Some(head) = refr.and_then(Chain::of) else {
                return Err(format!("{file}: a rule head is not a reference"));
            };
            self.names
                .entry(package.clone())
                .or_default()
                .insert(head.root.to_owned());
            let mut path = package.clone();
            path.extend(head.full());
            self.rules.push(Rule {
                path,
                module,
                ast: rule,
            });
        }
        self.modules.push(Module {
            file,
            package,
            imports,
        });
        Ok(())
    }
}

/// A violation: what the redaction rule may not read, and in which rule.
#[derive(Debug)]
struct Violation {
    rule: usize,
    reference: String,
    line: Option<u64>,
}

struct Walk<'g, 'a> {
    graph: &'g Graph<'a>,
    seen: Vec<bool>,
    queue: Vec<usize>,
    /// The rule being walked.
    current: usize,
    fields: BTreeSet<Vec<String>>,
    whole: bool,
    violation: Option<Violation>,
}

impl<'g, 'a> Walk<'g, 'a> {
    fn new(graph: &'g Graph<'a>) -> Self {
        Self {
            graph,
            seen: vec![false; graph.rules.len()],
            queue: Vec::new(),
            current: 0,
            fields: BTreeSet::new(),
            whole: false,
            violation: None,
        }
    }

    /// Queues every rule a reference to `data.<path>` can reach.
    fn reach(&mut self, path: &[String]) {
        for (i, rule) in self.graph.rules.iter().enumerate() {
            let n = rule.path.len().min(path.len());
            if rule.path[..n] == path[..n] && !self.seen[i] {
                self.seen[i] = true;
                self.queue.push(i);
            }
        }
    }

    fn rule(&mut self, index: usize) {
        self.current = index;
        let ast = self.graph.rules[index].ast;
        if let Some(spec) = ast.get("Spec") {
            if let Some(head) = spec["head"].as_object().and_then(|h| h.values().next()) {
                // The head's own name is not a read; its variable parts, key, args and value are.
                if let Some(chain) = Chain::of(&head["refr"]) {
                    for index in chain.indexes {
                        self.walk(index);
                    }
                }
                for part in ["key", "args", "assign"] {
                    if let Some(node) = head.get(part) {
                        self.walk(node);
                    }
                }
            }
            self.walk(&spec["bodies"]);
        } else if let Some(default) = ast.get("Default") {
            self.walk(&default["args"]);
            self.walk(&default["value"]);
        }
    }

    fn walk(&mut self, node: &Value) {
        if self.violation.is_some() {
            return;
        }
        match node {
            Value::Object(map) => {
                if let Some(call) = map.get("Call") {
                    self.call(call);
                    return;
                }
                if map.contains_key("Var")
                    || map.contains_key("RefDot")
                    || map.contains_key("RefBrack")
                {
                    if let Some(chain) = Chain::of(node) {
                        self.reference(&chain);
                        for index in chain.indexes {
                            self.walk(index);
                        }
                        return;
                    }
                }
                if let Some(mods) = map.get("with_mods") {
                    // `x with input.a as v`: the target is replaced, not read; the value is read.
                    for m in mods.as_array().into_iter().flatten() {
                        self.walk(&m["as"]);
                    }
                    self.walk(&map["literal"]);
                    return;
                }
                for value in map.values() {
                    self.walk(value);
                }
            }
            Value::Array(items) => {
                for item in items {
                    self.walk(item);
                }
            }
            _ => {}
        }
    }

    fn call(&mut self, call: &Value) {
        if let Some(fcn) = Chain::of(&call["fcn"]) {
            let module = &self.graph.modules[self.graph.rules[self.current].module];
            let local = module.imports.contains_key(fcn.root)
                || matches!(fcn.root, "data" | "input")
                || self
                    .package_names(module)
                    .is_some_and(|n| n.contains(fcn.root));
            if !local && !fcn.dynamic {
                let name = fcn.full().join(".");
                if IMPURE_BUILTINS.contains(&name.as_str()) {
                    self.violation = Some(Violation {
                        rule: self.current,
                        reference: format!("{name}()"),
                        line: fcn.line,
                    });
                    return;
                }
            }
        }
        self.walk(&call["fcn"]);
        self.walk(&call["params"]);
    }

    fn package_names(&self, module: &Module) -> Option<&'g BTreeSet<String>> {
        self.graph.names.get(&module.package)
    }

    /// Follows one reference: to rules, or into the input.
    fn reference(&mut self, chain: &Chain<'_>) {
        let module = &self.graph.modules[self.graph.rules[self.current].module];
        let mut path: Vec<String> = match module.imports.get(chain.root) {
            Some(imported) => imported.clone(),
            None => vec![chain.root.to_owned()],
        };
        path.extend(chain.path.iter().cloned());
        match path[0].as_str() {
            "input" => self.input(&path[1..], chain),
            "data" => self.reach(&path[1..]),
            name if self.package_names(module).is_some_and(|n| n.contains(name)) => {
                let mut full = module.package.clone();
                full.extend(path);
                self.reach(&full);
            }
            _ => {} // a local variable or a builtin
        }
    }

    /// An `input.<path>` reference: only `input.event…` is allowed.
    fn input(&mut self, path: &[String], chain: &Chain<'_>) {
        if path.first().map(String::as_str) != Some("event") {
            let mut reference = String::from("input");
            for segment in path {
                reference.push('.');
                reference.push_str(segment);
            }
            if chain.dynamic {
                reference.push_str("[…]");
            }
            self.violation = Some(Violation {
                rule: self.current,
                reference,
                line: chain.line,
            });
            return;
        }
        // `input.event` or `input.event.data` taken whole: the key would be the whole event.
        if path.len() == 1 || (path.len() == 2 && path[1] == "data") {
            self.whole = true;
        } else {
            self.fields.insert(path.to_vec());
        }
    }

    fn finish(self, entry: &str) -> RedactionRule {
        if self.whole {
            return RedactionRule {
                entry: entry.to_owned(),
                reads: Reads::Whole,
                keys: Vec::new(),
            };
        }
        // A field under another field read whole adds nothing to the key.
        let keys: Vec<Vec<String>> = self
            .fields
            .iter()
            .filter(|f| {
                !self
                    .fields
                    .iter()
                    .any(|other| other.len() < f.len() && f[..other.len()] == other[..])
            })
            .cloned()
            .collect();
        RedactionRule {
            entry: entry.to_owned(),
            reads: Reads::Fields(keys.iter().map(|k| k.join(".")).collect()),
            keys,
        }
    }
}

/// A reference `root.a["b"][x].c`: its root variable, its static path up to the first part that
/// is not a string literal, and the index expressions (which are read too).
#[derive(Debug)]
struct Chain<'a> {
    root: &'a str,
    line: Option<u64>,
    path: Vec<String>,
    /// Whether a variable (or computed) part follows `path`.
    dynamic: bool,
    indexes: Vec<&'a Value>,
}

impl<'a> Chain<'a> {
    /// The chain of `expr`, if it is a variable or a reference rooted at one.
    fn of(expr: &'a Value) -> Option<Self> {
        enum Part<'a> {
            Field(&'a str),
            Index(&'a Value),
        }
        let mut parts = Vec::new();
        let mut node = expr;
        let (root, line) = loop {
            if let Some(dot) = node.get("RefDot") {
                parts.push(Part::Field(dot["field"][1].as_str()?));
                node = &dot["refr"];
            } else if let Some(brack) = node.get("RefBrack") {
                parts.push(Part::Index(&brack["index"]));
                node = &brack["refr"];
            } else if let Some(var) = node.get("Var") {
                break (var["value"].as_str()?, var["span"]["line"].as_u64());
            } else {
                return None;
            }
        };
        let mut chain = Chain {
            root,
            line,
            path: Vec::new(),
            dynamic: false,
            indexes: Vec::new(),
        };
        for part in parts.into_iter().rev() {
            let name = match part {
                Part::Field(name) => Some(name),
                Part::Index(index) => {
                    chain.indexes.push(index);
                    index
                        .get("String")
                        .or_else(|| index.get("RawString"))
                        .and_then(|s| s["value"].as_str())
                }
            };
            match name {
                Some(name) if !chain.dynamic => chain.path.push(name.to_owned()),
                _ => chain.dynamic = true,
            }
        }
        Some(chain)
    }

    /// The root followed by the static path.
    fn full(&self) -> Vec<String> {
        let mut full = vec![self.root.to_owned()];
        full.extend(self.path.iter().cloned());
        full
    }
}

/// The source text a span covers.
fn span_text<'s>(contents: &'s str, span: &Value) -> Option<&'s str> {
    let start = usize::try_from(span["start"].as_u64()?).ok()?;
    let end = usize::try_from(span["end"].as_u64()?).ok()?;
    contents.get(start..end)
}
