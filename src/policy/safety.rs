//! The load-time proof that the compiled engine decides a policy set as the interpreter does.
//!
//! regorus's VM ([`super::compiled`]) treats an error inside a rule body (a builtin error,
//! `1 / 0`, two definitions of a complete rule with different values) as that body not holding,
//! where the interpreter fails the whole decision closed (`policy_error`). The VM also raises
//! where the interpreter does not: an ordering comparison (`<`, `>`, …) of two values of different
//! types. So a policy set is *compiled-safe*, and `[policy] engine = "auto"` decides it with the
//! VM, only when no expression in the entry rule's closure (every rule and function it can reach,
//! found by [`super::syntax::Walk`]) can raise on validated input:
//!
//! - operators: `+`, `-`, `*` of numbers (`-` of sets), `/` and `%` only by a non-zero constant,
//!   `|` and `&` of sets, ordering comparisons of operands of one type, `==`, `!=`, `in`;
//! - builtins from an allow-list, each with the argument types it cannot raise on
//!   (`count`, `floor`, `lower`, …); `time.parse_rfc3339_ns` only of a value known to be an RFC 3339 time;
//! - no `with`, no object comprehension, no partial object rule, no complete rule or function
//!   defined twice with values that may differ, no complete rule or function whose body iterates
//!   and whose value is not constant (one body could give two values).
//!
//! Types come from literals, from the data files (known at load), from other rules' values, and
//! from what admission guarantees of the input ([`InputFacts`]): the CloudEvents envelope's
//! attributes are strings and its `time` an RFC 3339 timestamp (checked at decode, with a year the
//! decision can represent in nanoseconds), `input.context.now` is written by reflex, and the
//! `type` keywords of each event type's schema file (with a registry, wire-format records' data
//! is validated against the registry's schema instead, so the set is proved a second time without
//! them: [`super::PolicySet::not_compiled_wire`]). A comparison in a rule body that also checks
//! `input.event.type == "<type>"` reads `input.event.data` with that type's schema alone: were
//! the comparison to raise in the VM, the body would not hold there either way.
//!
//! Anything else is a reason (`policies/x.rego:12: input.data.a / input.data.n may raise: …`)
//! and the set decides with the interpreter. The proof errs on the side of the interpreter; the
//! sampled cross-check in [`super::Evaluator`] watches for what it cannot see.

mod kinds;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde_json::Value;

use super::syntax::{span_text, Chain, Graph, Target, Walk};
pub use kinds::InputFacts;
use kinds::{describe, is_timestamp, Kind};

/// Why the entry rule `entry` of the modules in `ast` (regorus's AST JSON) may raise on validated
/// input: empty when the set is compiled-safe. `data` is the set's data document; files are named
/// relative to `dir`.
pub(crate) fn prove(
    ast: &str,
    entry: &str,
    data: &Value,
    facts: &InputFacts,
    dir: &Path,
) -> Result<Vec<String>, String> {
    let ast: Value = serde_json::from_str(ast).map_err(|e| e.to_string())?;
    let graph = Graph::of(&ast)?;
    let target: Vec<String> = entry
        .strip_prefix("data.")
        .unwrap_or(entry)
        .split('.')
        .map(str::to_owned)
        .collect();
    let mut walk = Walk::new(&graph, ());
    if !walk.reach(&target) {
        return Ok(vec![format!("no rule defines {entry}")]);
    }
    // The unit visitor never stops the walk.
    let _ = walk.run();
    let closure = walk.reached();
    let mut proof = Proof {
        graph: &graph,
        data,
        facts,
        dir,
        memo: HashMap::new(),
        reasons: Vec::new(),
        current: 0,
        iterates: false,
    };
    proof.definitions(&closure);
    for rule in closure {
        proof.rule(rule);
    }
    let mut reasons = proof.reasons;
    reasons.sort();
    reasons.dedup();
    Ok(reasons)
}

/// The state of one proof.
struct Proof<'p, 'a> {
    graph: &'p Graph<'a>,
    data: &'p Value,
    facts: &'p InputFacts,
    dir: &'p Path,
    /// Each rule's value kind, once worked out (`None` while it is being worked out).
    memo: HashMap<usize, Option<Kind>>,
    reasons: Vec<String>,
    /// The rule being checked.
    current: usize,
    /// Whether the body being checked iterates (`some`, a free variable index).
    iterates: bool,
}

/// Local variables and their kinds.
type Env = HashMap<String, Kind>;

/// Where an expression is: the event type its rule body requires (`input.event.type == "…"`),
/// when it sits directly in that body (not under `not`, nor in a comprehension or a head).
#[derive(Clone, Copy)]
struct Ctx<'s> {
    narrowed: Option<&'s str>,
}

impl<'p, 'a> Proof<'p, 'a> {
    fn reason(&mut self, line: Option<u64>, what: &str) {
        let file = &self.graph.modules[self.graph.rules[self.current].module].file;
        let file = self.dir.join(file);
        let location = match line {
            Some(line) => format!("{}:{line}", file.display()),
            None => file.display().to_string(),
        };
        self.reasons.push(format!("{location}: {what}"));
    }

    fn text(&self, node: &Value) -> String {
        self.graph.text(self.current, node).map_or_else(
            || "an expression".to_owned(),
            |t| t.split_whitespace().collect::<Vec<_>>().join(" "),
        )
    }

    /// Conflicts between definitions: complete rules and functions defined more than once with
    /// values that may differ, and partial object rules.
    fn definitions(&mut self, closure: &[usize]) {
        let mut by_path: BTreeMap<&[String], Vec<usize>> = BTreeMap::new();
        for &i in closure {
            let rule = &self.graph.rules[i];
            match rule.head() {
                Some(("Compr", head)) => {
                    if Chain::of(&head["refr"]).is_some_and(|c| c.dynamic) {
                        self.current = i;
                        self.reason(
                            rule.line(),
                            &format!(
                                "the partial object rule data.{} may give one key two values",
                                rule.path.join(".")
                            ),
                        );
                        continue;
                    }
                    by_path.entry(&rule.path).or_default().push(i);
                }
                Some(("Func", _)) => by_path.entry(&rule.path).or_default().push(i),
                _ => {}
            }
        }
        // A complete rule under another rule's path (`a := {…}` and `a.b := 1`) may conflict.
        for &i in closure {
            let rule = &self.graph.rules[i];
            if !matches!(rule.head(), Some(("Compr" | "Func", _))) {
                continue;
            }
            if let Some(&j) = closure.iter().find(|&&j| {
                let other = &self.graph.rules[j].path;
                other.len() > rule.path.len() && other[..rule.path.len()] == rule.path[..]
            }) {
                self.current = i;
                self.reason(
                    rule.line(),
                    &format!(
                        "data.{} and data.{} overlap; their values may conflict",
                        rule.path.join("."),
                        self.graph.rules[j].path.join(".")
                    ),
                );
            }
        }
        for (path, rules) in by_path {
            if rules.len() < 2 {
                continue;
            }
            let values: Vec<Option<&Value>> = rules
                .iter()
                .map(|&i| constant_value(&self.graph.rules[i]))
                .collect();
            let same = values.iter().all(|v| v.is_some() && *v == values[0]);
            if !same {
                self.current = rules[0];
                let line = self.graph.rules[rules[0]].line();
                self.reason(
                    line,
                    &format!(
                        "data.{} is defined {} times with values that may differ; the definitions may conflict",
                        path.join("."),
                        rules.len()
                    ),
                );
            }
        }
    }

    /// Checks one rule (once) and gives its value's kind.
    fn rule(&mut self, index: usize) -> Kind {
        match self.memo.get(&index) {
            Some(Some(kind)) => return *kind,
            Some(None) => return Kind::ANY, // being worked out (Rego has no recursion)
            None => {}
        }
        self.memo.insert(index, None);
        let (saved_rule, saved_iter) = (self.current, self.iterates);
        self.current = index;
        let kind = self.rule_kind(index);
        self.current = saved_rule;
        self.iterates = saved_iter;
        self.memo.insert(index, Some(kind));
        kind
    }

    fn rule_kind(&mut self, index: usize) -> Kind {
        let rule = &self.graph.rules[index];
        let line = rule.line();
        if let Some(default) = rule.ast.get("Default") {
            let mut env = Env::new();
            return self.expr(&default["value"], &mut env, Ctx { narrowed: None });
        }
        let Some((head_kind, head)) = rule.head() else {
            self.reason(line, "a rule of an unknown shape is not proved");
            return Kind::ANY;
        };
        let partial_object =
            head_kind == "Compr" && Chain::of(&head["refr"]).is_some_and(|c| c.dynamic);
        let value_constant = constant_value(rule).is_some();
        let bodies = rule.ast["Spec"]["bodies"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut kind = Kind::NONE;
        let mut iterates = false;
        let run = |proof: &mut Self, body: Option<&Value>, kind: &mut Kind, iterates: &mut bool| {
            let mut env = Env::new();
            if let Some(args) = head.get("args") {
                for arg in args.as_array().into_iter().flatten() {
                    bind_vars(arg, &mut env);
                }
            }
            proof.iterates = false;
            if let Some(body) = body {
                proof.query(&body["query"], &mut env, true);
            }
            *iterates |= proof.iterates;
            // The body's own value (`else := v`), else the head's.
            let assign = body
                .and_then(|b| b.get("assign"))
                .filter(|a| !a.is_null())
                .or_else(|| head.get("assign").filter(|a| !a.is_null()));
            let ctx = Ctx { narrowed: None };
            match head_kind {
                "Set" => {
                    if let Some(key) = head.get("key").filter(|k| !k.is_null()) {
                        proof.expr(key, &mut env, ctx);
                    }
                    *kind = kind.union(Kind::SET);
                }
                _ => {
                    if let Some(chain) = Chain::of(&head["refr"]) {
                        for index in chain.indexes {
                            proof.expr(index, &mut env, ctx);
                        }
                    }
                    let value = match assign {
                        Some(assign) => proof.expr(&assign["value"], &mut env, ctx),
                        None => Kind::BOOL,
                    };
                    *kind = kind.union(if partial_object { Kind::OBJ } else { value });
                }
            }
        };
        if bodies.is_empty() {
            run(self, None, &mut kind, &mut iterates);
        }
        for body in &bodies {
            run(self, Some(body), &mut kind, &mut iterates);
        }
        let complete = matches!(head_kind, "Compr" | "Func") && !partial_object;
        if complete && iterates && !value_constant {
            self.reason(
                line,
                &format!(
                    "data.{} iterates in its body and its value is not constant, so one body may give it two values",
                    rule.path.join(".")
                ),
            );
        }
        kind
    }

    /// Checks a query's literals in order, binding the variables they assign.
    fn query(&mut self, query: &Value, env: &mut Env, body: bool) {
        let stmts = query["stmts"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let narrowed = if body {
            self.narrowed_type(stmts)
        } else {
            None
        };
        let ctx = Ctx {
            narrowed: narrowed.as_deref(),
        };
        for stmt in stmts {
            if stmt
                .get("with_mods")
                .is_some_and(|m| m.as_array().is_some_and(|m| !m.is_empty()))
            {
                let line = stmt["span"]["line"].as_u64();
                self.reason(
                    line,
                    "`with` is not proved (it replaces part of the input or data)",
                );
                continue;
            }
            let Some((kind, literal)) = stmt["literal"].as_object().and_then(|o| o.iter().next())
            else {
                continue;
            };
            match kind.as_str() {
                "SomeVars" => {
                    self.iterates = true;
                    let contents =
                        &self.graph.modules[self.graph.rules[self.current].module].contents;
                    for span in literal["vars"].as_array().into_iter().flatten() {
                        if let Some(name) = span_text(contents, span) {
                            env.insert(name.to_owned(), Kind::ANY);
                        }
                    }
                }
                "SomeIn" => {
                    self.iterates = true;
                    self.expr(&literal["collection"], env, ctx);
                    for part in ["key", "value"] {
                        if let Some(node) = literal.get(part).filter(|n| !n.is_null()) {
                            bind_vars(node, env);
                        }
                    }
                }
                "Expr" => {
                    self.expr(&literal["expr"], env, ctx);
                }
                "NotExpr" => {
                    // How the VM treats an error under `not` is not relied on.
                    self.expr(&literal["expr"], env, Ctx { narrowed: None });
                }
                "Every" => {
                    self.expr(&literal["domain"], env, ctx);
                    let mut inner = env.clone();
                    let contents =
                        &self.graph.modules[self.graph.rules[self.current].module].contents;
                    for part in ["key", "value"] {
                        if let Some(name) = literal.get(part).and_then(|s| span_text(contents, s)) {
                            inner.insert(name.to_owned(), Kind::ANY);
                        }
                    }
                    let saved = self.iterates;
                    self.query(&literal["query"], &mut inner, false);
                    self.iterates = saved;
                }
                other => {
                    let line = stmt["span"]["line"].as_u64();
                    self.reason(line, &format!("a {other} literal is not proved"));
                }
            }
        }
    }

    /// The event type a body requires with `input.event.type == "<type>"`, if any.
    fn narrowed_type(&self, stmts: &[Value]) -> Option<String> {
        let module = self.graph.rules[self.current].module;
        stmts.iter().find_map(|stmt| {
            let expr = stmt["literal"].get("Expr")?.get("expr")?;
            let eq = expr.get("BoolExpr")?;
            if eq["op"] != "Eq" {
                return None;
            }
            let (l, r) = (&eq["lhs"], &eq["rhs"]);
            let is_type = |node: &Value| {
                Chain::of(node).is_some_and(|c| {
                    !c.dynamic
                        && self.graph.resolve(module, &c)
                            == Target::Input(vec!["event".into(), "type".into()])
                })
            };
            let string = |node: &Value| {
                node.get("String")
                    .and_then(|s| s["value"].as_str())
                    .map(str::to_owned)
            };
            if is_type(l) {
                string(r)
            } else if is_type(r) {
                string(l)
            } else {
                None
            }
        })
    }

    /// Checks an expression and gives its kind.
    fn expr(&mut self, node: &Value, env: &mut Env, ctx: Ctx<'_>) -> Kind {
        let Some((kind, inner)) = node.as_object().and_then(|o| o.iter().next()) else {
            return Kind::ANY;
        };
        let line = inner["span"]["line"].as_u64();
        match kind.as_str() {
            "String" | "RawString" => match inner["value"].as_str() {
                Some(s) if is_timestamp(s) => Kind::TS,
                _ => Kind::STR,
            },
            "Number" => Kind::of(&inner["value"]),
            "Bool" => Kind::BOOL,
            "Null" => Kind::NULL,
            "Var" | "RefDot" | "RefBrack" => self.reference(node, env, ctx),
            "Array" | "Set" => {
                for item in inner["items"].as_array().into_iter().flatten() {
                    self.expr(item, env, ctx);
                }
                if kind == "Array" {
                    Kind::ARR
                } else {
                    Kind::SET
                }
            }
            "Object" => {
                let mut keys = Vec::new();
                for field in inner["fields"].as_array().into_iter().flatten() {
                    let key = &field[1];
                    match literal_value(key) {
                        Some(k) if !keys.contains(&k) => keys.push(k),
                        _ => {
                            let text = self.text(key);
                            self.reason(line, &format!("the object key {text} may repeat another key with another value"));
                        }
                    }
                    self.expr(key, env, ctx);
                    self.expr(&field[2], env, ctx);
                }
                Kind::OBJ
            }
            "ArrayCompr" | "SetCompr" | "ObjectCompr" => {
                let mut inner_env = env.clone();
                let saved = self.iterates;
                self.query(&inner["query"], &mut inner_env, false);
                self.iterates = saved;
                let none = Ctx { narrowed: None };
                match kind.as_str() {
                    "ArrayCompr" => {
                        self.expr(&inner["term"], &mut inner_env, none);
                        Kind::ARR
                    }
                    "SetCompr" => {
                        self.expr(&inner["term"], &mut inner_env, none);
                        Kind::SET
                    }
                    _ => {
                        self.expr(&inner["key"], &mut inner_env, none);
                        self.expr(&inner["value"], &mut inner_env, none);
                        let text = self.text(node);
                        self.reason(
                            line,
                            &format!("the object comprehension {text} may give one key two values"),
                        );
                        Kind::OBJ
                    }
                }
            }
            "Call" => self.call(node, inner, env, ctx),
            "UnaryExpr" => {
                let k = self.expr(&inner["expr"], env, ctx);
                if !k.within(Kind::NUM) {
                    let text = self.text(node);
                    self.reason(
                        line,
                        &format!(
                            "{text} may raise: the operand may be {}",
                            describe(k.minus(Kind::NUM))
                        ),
                    );
                }
                Kind::NUM
            }
            "BinExpr" => {
                let l = self.expr(&inner["lhs"], env, ctx);
                let r = self.expr(&inner["rhs"], env, ctx);
                if !(l.within(Kind::SET) && r.within(Kind::SET)) {
                    let text = self.text(node);
                    self.reason(
                        line,
                        &format!("{text} may raise: its operands are not both known to be sets"),
                    );
                }
                Kind::SET
            }
            "BoolExpr" => {
                let l = self.expr(&inner["lhs"], env, ctx);
                let r = self.expr(&inner["rhs"], env, ctx);
                if inner["op"] != "Eq" && inner["op"] != "Ne" {
                    let l = self.narrowed(&inner["lhs"], env, ctx).unwrap_or(l);
                    let r = self.narrowed(&inner["rhs"], env, ctx).unwrap_or(r);
                    if !Kind::one_type(l, r) {
                        let text = self.text(node);
                        self.reason(
                            line,
                            &format!(
                                "{text} may raise in the compiled engine, which refuses to order values of different types: one side may be {}, the other {}",
                                describe(l),
                                describe(r)
                            ),
                        );
                    }
                }
                Kind::BOOL
            }
            "ArithExpr" => self.arith(node, inner, env, ctx),
            "AssignExpr" => {
                let r = self.expr(&inner["rhs"], env, ctx);
                let lhs = &inner["lhs"];
                match lhs.get("Var").and_then(|v| v["value"].as_str()) {
                    Some(name) if name != "_" => {
                        let known = env.get(name).copied();
                        env.insert(name.to_owned(), known.map_or(r, |k| k.union(r)));
                    }
                    Some(_) => {}
                    None => {
                        bind_vars(lhs, env);
                        if inner["op"] == "Eq" {
                            bind_vars(&inner["rhs"], env);
                        }
                        self.expr(lhs, env, ctx);
                    }
                }
                Kind::BOOL
            }
            "Membership" => {
                if let Some(key) = inner.get("key").filter(|k| !k.is_null()) {
                    self.expr(key, env, ctx);
                }
                self.expr(&inner["value"], env, ctx);
                self.expr(&inner["collection"], env, ctx);
                Kind::BOOL
            }
            other => {
                self.reason(line, &format!("a {other} expression is not proved"));
                Kind::ANY
            }
        }
    }

    /// The kind of an operand of a comparison as the body's event type makes it, when it reads
    /// the input directly.
    fn narrowed(&self, node: &Value, env: &Env, ctx: Ctx<'_>) -> Option<Kind> {
        let ty = ctx.narrowed?;
        let chain = Chain::of(node)?;
        if env.contains_key(chain.root) {
            return None;
        }
        let (root, parts) = self.absolute(&chain)?;
        (root == "input").then(|| self.facts.input(&parts, Some(ty)))
    }

    /// A reference's root (`input` or `data`) and every part after it (`None`: computed).
    fn absolute(&self, chain: &Chain<'_>) -> Option<(String, Vec<Option<String>>)> {
        let module = &self.graph.modules[self.graph.rules[self.current].module];
        let mut parts: Vec<Option<String>> = match module.imports.get(chain.root) {
            Some(imported) => imported.iter().cloned().map(Some).collect(),
            None => vec![Some(chain.root.to_owned())],
        };
        parts.extend(chain.parts.iter().cloned());
        let root = parts.remove(0)?;
        match root.as_str() {
            "input" | "data" => Some((root, parts)),
            _ => match self
                .graph
                .resolve(self.graph.rules[self.current].module, chain)
            {
                Target::Data(_) => {
                    let mut full: Vec<Option<String>> =
                        module.package.iter().cloned().map(Some).collect();
                    full.push(Some(root));
                    full.extend(parts);
                    Some(("data".to_owned(), full))
                }
                _ => None,
            },
        }
    }

    fn reference(&mut self, node: &Value, env: &mut Env, ctx: Ctx<'_>) -> Kind {
        let Some(chain) = Chain::of(node) else {
            // A reference into a computed value (`f(x).y`, `[1][0]`): never raises itself.
            if let Some((_, inner)) = node.as_object().and_then(|o| o.iter().next()) {
                self.expr(&inner["refr"], env, ctx);
                if let Some(index) = inner.get("index") {
                    self.expr(index, env, ctx);
                }
            }
            return Kind::ANY;
        };
        for index in &chain.indexes {
            // A variable index not bound yet iterates (`data.x[k]`) and binds it.
            if let (Some(name), Some(var)) = (
                index.get("Var").and_then(|v| v["value"].as_str()),
                Chain::of(index),
            ) {
                let free = !env.contains_key(name)
                    && self
                        .graph
                        .resolve(self.graph.rules[self.current].module, &var)
                        == Target::Local;
                if free {
                    self.iterates = true;
                    env.insert(name.to_owned(), Kind::ANY);
                    continue;
                }
            }
            self.expr(index, env, ctx);
        }
        if let Some(kind) = env.get(chain.root) {
            return if chain.parts.is_empty() {
                *kind
            } else {
                Kind::ANY
            };
        }
        match self.absolute(&chain) {
            Some((root, parts)) if root == "input" => self.facts.input(&parts, None),
            Some((_, parts)) => self.data_kind(&parts),
            None => Kind::ANY,
        }
    }

    /// The kind of `data.<parts>`: rules' values, or the data files'.
    fn data_kind(&mut self, parts: &[Option<String>]) -> Kind {
        let fixed: Vec<String> = parts.iter().map_while(Clone::clone).collect();
        let rules: Vec<usize> = self.graph.reached_by(&fixed).collect();
        let from_data = kinds::at(self.data, parts);
        if rules.is_empty() {
            return from_data;
        }
        let mut kind = from_data;
        for i in rules {
            let path_len = self.graph.rules[i].path.len();
            kind = kind.union(if path_len == parts.len() && fixed.len() == parts.len() {
                self.rule(i)
            } else if path_len > fixed.len() {
                Kind::OBJ
            } else {
                Kind::ANY
            });
        }
        kind
    }

    fn call(&mut self, node: &Value, call: &Value, env: &mut Env, ctx: Ctx<'_>) -> Kind {
        let line = call["span"]["line"].as_u64();
        let params: Vec<Kind> = call["params"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| self.expr(p, env, ctx))
            .collect();
        let module = self.graph.rules[self.current].module;
        let Some(fcn) = Chain::of(&call["fcn"]) else {
            self.reason(line, "a call of a computed function is not proved");
            return Kind::ANY;
        };
        if self.graph.is_builtin(module, &fcn) {
            let name = fcn.full().join(".");
            return match builtin(&name, &params) {
                Ok(kind) => kind,
                Err(why) => {
                    let text = self.text(node);
                    self.reason(line, &format!("{text} may raise: {why}"));
                    Kind::ANY
                }
            };
        }
        match self.graph.resolve(module, &fcn) {
            Target::Data(path) => {
                let defs: Vec<usize> = self
                    .graph
                    .reached_by(&path)
                    .filter(|&i| self.graph.rules[i].path == path)
                    .collect();
                if defs.is_empty() {
                    let text = self.text(node);
                    self.reason(line, &format!("{text} calls no function the set defines"));
                    return Kind::ANY;
                }
                defs.into_iter()
                    .fold(Kind::NONE, |k, i| k.union(self.rule(i)))
            }
            _ => {
                let text = self.text(node);
                self.reason(
                    line,
                    &format!("{text} calls something that is not a builtin nor a rule"),
                );
                Kind::ANY
            }
        }
    }

    fn arith(&mut self, node: &Value, inner: &Value, env: &mut Env, ctx: Ctx<'_>) -> Kind {
        let line = inner["span"]["line"].as_u64();
        let l = self.expr(&inner["lhs"], env, ctx);
        let r = self.expr(&inner["rhs"], env, ctx);
        let op = inner["op"].as_str().unwrap_or_default();
        let divisor = || {
            literal_value(&inner["rhs"])
                .and_then(|v| v.as_f64())
                .filter(|d| *d != 0.0)
        };
        let problem = match op {
            "Add" | "Mul" | "Sub" if l.within(Kind::NUM) && r.within(Kind::NUM) => None,
            "Sub" if l.within(Kind::SET) && r.within(Kind::SET) => None,
            "Add" | "Mul" | "Sub" => Some(format!(
                "its operands are not both known to be numbers (one may be {}, the other {})",
                describe(l),
                describe(r)
            )),
            "Div" if divisor().is_none() => {
                Some("the divisor is not a non-zero constant".to_owned())
            }
            "Mod" if divisor().is_none_or(|d| d.fract() != 0.0) => {
                Some("the divisor is not a non-zero integer constant".to_owned())
            }
            "Div" if !l.within(Kind::NUM) => Some(format!(
                "the dividend may be {}",
                describe(l.minus(Kind::NUM))
            )),
            "Mod" if !l.within(Kind::INT) => Some(format!(
                "the dividend may be {}",
                describe(l.minus(Kind::INT))
            )),
            "Div" | "Mod" => None,
            other => Some(format!("the operator {other} is not proved")),
        };
        if let Some(why) = problem {
            let text = self.text(node);
            let what = match op {
                "Div" => format!("division {text}"),
                "Mod" => format!("modulo {text}"),
                _ => text,
            };
            self.reason(line, &format!("{what} may raise: {why}"));
        }
        match op {
            "Sub" if l.within(Kind::SET) && r.within(Kind::SET) => Kind::SET,
            "Add" | "Sub" | "Mul" | "Mod" if l.within(Kind::INT) && r.within(Kind::INT) => {
                Kind::INT
            }
            _ => Kind::NUM,
        }
    }
}

/// The builtins proved, with the argument kinds each cannot raise on, and its result's kind.
fn builtin(name: &str, args: &[Kind]) -> Result<Kind, String> {
    let need = |i: usize, kind: Kind, what: &str| -> Result<(), String> {
        let k = args.get(i).copied().unwrap_or(Kind::ANY);
        if k.within(kind) {
            Ok(())
        } else {
            Err(format!(
                "argument {} may be {}, not {what}",
                i + 1,
                describe(k.minus(kind))
            ))
        }
    };
    match name {
        "count" => need(
            0,
            Kind::STRING.union(Kind::COLLECTION),
            "a string or collection",
        )
        .map(|()| Kind::INT),
        "floor" | "ceil" | "round" => need(0, Kind::NUM, "a number").map(|()| Kind::INT),
        "abs" => need(0, Kind::NUM, "a number").map(|()| Kind::NUM),
        "time.parse_rfc3339_ns" => {
            need(0, Kind::TS, "an RFC 3339 time admission has checked").map(|()| Kind::INT)
        }
        "time.now_ns" => Ok(Kind::INT),
        "lower" | "upper" | "trim_space" => need(0, Kind::STRING, "a string").map(|()| Kind::STR),
        "startswith" | "endswith" | "contains" => {
            need(0, Kind::STRING, "a string")?;
            need(1, Kind::STRING, "a string").map(|()| Kind::BOOL)
        }
        "is_string" | "is_number" | "is_boolean" | "is_array" | "is_set" | "is_object"
        | "is_null" => Ok(Kind::BOOL),
        "type_name" => Ok(Kind::STR),
        "object.keys" => need(0, Kind::OBJ, "an object").map(|()| Kind::SET),
        "array.concat" => {
            need(0, Kind::ARR, "an array")?;
            need(1, Kind::ARR, "an array").map(|()| Kind::ARR)
        }
        "json.marshal" => Ok(Kind::STR),
        _ => Err(format!(
            "{name}() is not on the list of builtins proved not to raise"
        )),
    }
}

/// The value of a literal expression (string, number, boolean, null).
fn literal_value(node: &Value) -> Option<Value> {
    let (kind, inner) = node.as_object()?.iter().next()?;
    match kind.as_str() {
        "String" | "RawString" | "Number" | "Bool" | "Null" => Some(inner["value"].clone()),
        _ => None,
    }
}

/// The value a rule definition gives when it is a literal (`p if …` gives `true`).
fn constant_value<'v>(rule: &super::syntax::Rule<'v>) -> Option<&'v Value> {
    static TRUE: Value = Value::Bool(true);
    let (_, head) = rule.head()?;
    let bodies = rule.ast["Spec"]["bodies"].as_array();
    if bodies.is_some_and(|b| {
        b.iter()
            .any(|b| b.get("assign").is_some_and(|a| !a.is_null()))
    }) {
        return None; // `else := v` bodies
    }
    match head.get("assign").filter(|a| !a.is_null()) {
        None => Some(&TRUE),
        Some(assign) => {
            let (kind, inner) = assign["value"].as_object()?.iter().next()?;
            matches!(
                kind.as_str(),
                "String" | "RawString" | "Number" | "Bool" | "Null"
            )
            .then_some(&inner["value"])
        }
    }
}

/// Binds every variable of a pattern (`[a, b]`, `{"k": v}`, `x`) as of any kind.
fn bind_vars(node: &Value, env: &mut Env) {
    match node {
        Value::Object(map) => {
            if let Some(var) = map.get("Var") {
                if let Some(name) = var["value"].as_str().filter(|n| *n != "_") {
                    env.entry(name.to_owned()).or_insert(Kind::ANY);
                }
                return;
            }
            if map.contains_key("RefDot")
                || map.contains_key("RefBrack")
                || map.contains_key("Call")
            {
                return;
            }
            for value in map.values() {
                bind_vars(value, env);
            }
        }
        Value::Array(items) => {
            for item in items {
                bind_vars(item, env);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests;
