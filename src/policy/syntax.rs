//! The policy set's syntax tree as a graph of rules, and the walk over the rules a rule uses.
//!
//! regorus hands every module's AST as JSON ([`regorus::Engine::get_ast_as_json`]). A rule is
//! known by its path (`data.<package>.<head>`, the head's ref up to its first variable part). The
//! [`Walk`] starts at one rule and follows every reference its heads and bodies make: `data.…`
//! (to every rule whose path is a prefix of the reference or extends it, so
//! `data.reflex.audit.redact`, `data.reflex.audit` and `data.reflex[x]` all count), bare names of
//! rules of the same package, and `import` aliases. A [`Visit`] sees each `input…` reference and
//! each call of a builtin on the way, and may stop the walk with a [`Violation`].
//!
//! It over-approximates on purpose: a local variable named like a rule of its package counts as
//! a reference to that rule, and a reference through a variable index reaches every rule under
//! the known prefix. Both users ([`super::redaction`]'s purity check and [`super::safety`]'s
//! proof) need every rule that can run, never fewer.

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

/// One module: where it is, its package and its import aliases.
#[derive(Debug)]
pub(crate) struct Module {
    /// Its file name, relative to the policy directory.
    pub(crate) file: String,
    /// Its source text (for the text a span covers).
    pub(crate) contents: String,
    /// The package's segments after `data`.
    pub(crate) package: Vec<String>,
    /// Alias → the imported path, root (`data` or `input`) first.
    pub(crate) imports: HashMap<String, Vec<String>>,
}

/// One rule definition (a rule with several definitions appears once per definition).
#[derive(Debug)]
pub(crate) struct Rule<'a> {
    /// Package segments followed by the head's static path.
    pub(crate) path: Vec<String>,
    /// Its module, an index into [`Graph::modules`].
    pub(crate) module: usize,
    /// The rule's AST node (`{"Spec": …}` or `{"Default": …}`).
    pub(crate) ast: &'a Value,
}

impl<'a> Rule<'a> {
    /// The head of a `Spec` rule: its kind (`Compr`, `Set`, `Func`) and node.
    pub(crate) fn head(&self) -> Option<(&'a str, &'a Value)> {
        self.ast
            .get("Spec")?
            .get("head")?
            .as_object()?
            .iter()
            .next()
            .map(|(kind, node)| (kind.as_str(), node))
    }

    /// The line the rule starts on.
    pub(crate) fn line(&self) -> Option<u64> {
        node_line(self.ast)
    }
}

/// Every module and rule of a policy set.
#[derive(Debug, Default)]
pub(crate) struct Graph<'a> {
    /// The modules.
    pub(crate) modules: Vec<Module>,
    /// Every rule definition.
    pub(crate) rules: Vec<Rule<'a>>,
    /// Package → the first segment of each rule head it defines (the names a body may use bare).
    names: HashMap<Vec<String>, BTreeSet<String>>,
}

/// What a reference resolves to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// The input document at this path (segments after `input`).
    Input(Vec<String>),
    /// The data document (rules or data files) at this path (segments after `data`).
    Data(Vec<String>),
    /// A local variable, an argument or a builtin.
    Local,
}

impl<'a> Graph<'a> {
    /// The graph of regorus's AST JSON `ast` (parsed), a list of modules.
    pub(crate) fn of(ast: &'a Value) -> Result<Self, String> {
        let policies = ast
            .as_array()
            .ok_or("the syntax tree is not a list of modules")?;
        let mut graph = Graph::default();
        for policy in policies {
            graph.add_module(policy)?;
        }
        Ok(graph)
    }

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
            contents: contents.to_owned(),
            package,
            imports,
        });
        Ok(())
    }

    /// The names of rules the package of `module` defines (usable bare in its bodies).
    fn package_names(&self, module: &Module) -> Option<&BTreeSet<String>> {
        self.names.get(&module.package)
    }

    /// What `chain`, written in `module`, refers to; the path is the reference's static part.
    pub(crate) fn resolve(&self, module: usize, chain: &Chain<'_>) -> Target {
        let module = &self.modules[module];
        let mut path: Vec<String> = match module.imports.get(chain.root) {
            Some(imported) => imported.clone(),
            None => vec![chain.root.to_owned()],
        };
        path.extend(chain.path.iter().cloned());
        match path[0].as_str() {
            "input" => Target::Input(path.split_off(1)),
            "data" => Target::Data(path.split_off(1)),
            name if self.package_names(module).is_some_and(|n| n.contains(name)) => {
                let mut full = module.package.clone();
                full.extend(path);
                Target::Data(full)
            }
            _ => Target::Local,
        }
    }

    /// Whether a call of `fcn` in `module` is a builtin (not a rule, import, `data` or `input`).
    pub(crate) fn is_builtin(&self, module: usize, fcn: &Chain<'_>) -> bool {
        let module = &self.modules[module];
        let local = module.imports.contains_key(fcn.root)
            || matches!(fcn.root, "data" | "input")
            || self
                .package_names(module)
                .is_some_and(|n| n.contains(fcn.root));
        !local && !fcn.dynamic
    }

    /// The rules a reference to `data.<path>` can reach: every rule whose path is a prefix of
    /// `path` or extends it.
    pub(crate) fn reached_by<'s>(&'s self, path: &'s [String]) -> impl Iterator<Item = usize> + 's {
        self.rules.iter().enumerate().filter_map(move |(i, rule)| {
            let n = rule.path.len().min(path.len());
            (rule.path[..n] == path[..n]).then_some(i)
        })
    }

    /// The source text of an expression node of `rule`.
    pub(crate) fn text(&self, rule: usize, node: &Value) -> Option<&str> {
        let span = node.as_object()?.values().next()?.get("span")?;
        span_text(&self.modules[self.rules[rule].module].contents, span)
    }
}

/// What a [`Visit`] stopped the walk on: in which rule, what, and where.
#[derive(Debug)]
pub(crate) struct Violation {
    /// The rule making the reference.
    pub(crate) rule: usize,
    /// What it refers to or calls, as the message shows it.
    pub(crate) reference: String,
    /// The line of the reference.
    pub(crate) line: Option<u64>,
}

/// What a walk looks at besides the rules it reaches.
pub(crate) trait Visit {
    /// An `input.<path>` reference (`dynamic`: a variable part follows `path`); `Err` stops the
    /// walk with that description of the reference.
    fn input(&mut self, _path: &[String], _dynamic: bool) -> Result<(), String> {
        Ok(())
    }

    /// A call of the builtin `name`; `Err` stops the walk with that description of the call.
    fn builtin(&mut self, _name: &str) -> Result<(), String> {
        Ok(())
    }
}

/// The closure alone: no reference is looked at.
impl Visit for () {}

/// A walk over the rules reachable from the ones it is started on.
pub(crate) struct Walk<'g, 'a, V> {
    graph: &'g Graph<'a>,
    seen: Vec<bool>,
    queue: Vec<usize>,
    /// The rule being walked.
    current: usize,
    violation: Option<Violation>,
    /// What looks at each reference.
    pub(crate) visitor: V,
}

impl<'g, 'a, V: Visit> Walk<'g, 'a, V> {
    /// A walk over `graph` that shows references to `visitor`.
    pub(crate) fn new(graph: &'g Graph<'a>, visitor: V) -> Self {
        Self {
            graph,
            seen: vec![false; graph.rules.len()],
            queue: Vec::new(),
            current: 0,
            violation: None,
            visitor,
        }
    }

    /// Queues every rule a reference to `data.<path>` can reach; whether there was any.
    pub(crate) fn reach(&mut self, path: &[String]) -> bool {
        let mut any = false;
        for i in self.graph.reached_by(path) {
            any = true;
            if !self.seen[i] {
                self.seen[i] = true;
                self.queue.push(i);
            }
        }
        any
    }

    /// Walks every queued rule and every rule they reach, until the visitor stops it.
    pub(crate) fn run(&mut self) -> Result<(), Violation> {
        while let Some(rule) = self.queue.pop() {
            self.rule(rule);
            if let Some(v) = self.violation.take() {
                return Err(v);
            }
        }
        Ok(())
    }

    /// The rules reached so far, in definition order.
    pub(crate) fn reached(&self) -> Vec<usize> {
        (0..self.seen.len()).filter(|i| self.seen[*i]).collect()
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
            let module = self.graph.rules[self.current].module;
            if self.graph.is_builtin(module, &fcn) {
                if let Err(reference) = self.visitor.builtin(&fcn.full().join(".")) {
                    self.violation = Some(Violation {
                        rule: self.current,
                        reference,
                        line: fcn.line,
                    });
                    return;
                }
            }
        }
        self.walk(&call["fcn"]);
        self.walk(&call["params"]);
    }

    /// Follows one reference: to rules, or into the input.
    fn reference(&mut self, chain: &Chain<'_>) {
        let module = self.graph.rules[self.current].module;
        match self.graph.resolve(module, chain) {
            Target::Input(path) => {
                if let Err(reference) = self.visitor.input(&path, chain.dynamic) {
                    self.violation = Some(Violation {
                        rule: self.current,
                        reference,
                        line: chain.line,
                    });
                }
            }
            Target::Data(path) => {
                self.reach(&path);
            }
            Target::Local => {}
        }
    }
}

/// A reference `root.a["b"][x].c`: its root variable, its static path up to the first part that
/// is not a string literal, and the index expressions (which are read too).
#[derive(Debug)]
pub(crate) struct Chain<'a> {
    /// The root variable.
    pub(crate) root: &'a str,
    /// Its line.
    pub(crate) line: Option<u64>,
    /// The static path after the root.
    pub(crate) path: Vec<String>,
    /// Every part after the root: a field name, or `None` for a computed index.
    pub(crate) parts: Vec<Option<String>>,
    /// Whether a variable (or computed) part follows `path`.
    pub(crate) dynamic: bool,
    /// The index expressions, in order.
    pub(crate) indexes: Vec<&'a Value>,
}

impl<'a> Chain<'a> {
    /// The chain of `expr`, if it is a variable or a reference rooted at one.
    pub(crate) fn of(expr: &'a Value) -> Option<Self> {
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
            parts: Vec::new(),
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
            chain.parts.push(name.map(str::to_owned));
            match name {
                Some(name) if !chain.dynamic => chain.path.push(name.to_owned()),
                _ => chain.dynamic = true,
            }
        }
        Some(chain)
    }

    /// The root followed by the static path.
    pub(crate) fn full(&self) -> Vec<String> {
        let mut full = vec![self.root.to_owned()];
        full.extend(self.path.iter().cloned());
        full
    }
}

/// The source text a span covers.
pub(crate) fn span_text<'s>(contents: &'s str, span: &Value) -> Option<&'s str> {
    let start = usize::try_from(span["start"].as_u64()?).ok()?;
    let end = usize::try_from(span["end"].as_u64()?).ok()?;
    contents.get(start..end)
}

/// The line of an AST node of the `{"Kind": {"span": …}}` shape.
pub(crate) fn node_line(node: &Value) -> Option<u64> {
    node.as_object()?
        .values()
        .next()?
        .get("span")?
        .get("line")?
        .as_u64()
}
