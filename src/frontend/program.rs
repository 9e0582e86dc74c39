//! Reading and running one build file the way envd v1 does: the syntax header, envd's dialect
//! (including the global re-assignment ban the starlark crate does not enforce), the top-level
//! statements, then the entry function called with no arguments.

use std::collections::HashMap;
use std::path::Path;
use std::path::PathBuf;

use starlark::codemap::Span;
use starlark::environment::Module;
use starlark::eval::Evaluator;
use starlark::syntax::AstModule;
use starlark::syntax::Dialect;
use starlark::syntax::DialectTypes;
use starlark::syntax::ast::AssignTarget;
use starlark::syntax::ast::AstAssignTarget;
use starlark::syntax::ast::AstExpr;
use starlark::syntax::ast::AstStmt;
use starlark::syntax::ast::Expr;
use starlark::syntax::ast::Stmt;
use starlark::values::Heap;
use starlark::values::Value;

use super::builtins;
use super::builtins::Recorder;
use super::error::BuiltinError;
use super::error::Diagnostic;
use super::error::FrontendError;
use super::error::Location;
use super::memo::Trace;
use crate::ir::Environment;
use crate::ir::IrError;

/// envd v1's dialect (go.starlark.net options in envd's interpreter): no `set` (not
/// predeclared), no `while` (reserved word), no top-level `if`/`for`, recursion allowed,
/// `load()` of local files. Global re-assignment is checked separately.
fn dialect() -> Dialect {
    Dialect {
        enable_def: true,
        enable_lambda: true,
        enable_load: true,
        enable_keyword_only_arguments: true,
        enable_positional_only_arguments: false,
        enable_types: DialectTypes::Disable,
        enable_load_reexport: false,
        enable_top_level_stmt: false,
        enable_f_strings: false,
        ..Dialect::Standard
    }
}

fn diag(message: impl Into<String>, location: Option<Location>) -> Box<Diagnostic> {
    Box::new(Diagnostic::new(message, location))
}

/// `<context_dir>/<file>` if it exists, else `<file>` against the current directory (envd's
/// `ParseBuildOpt`).
fn resolve(context_dir: &Path, file: &str, trace: &Trace) -> Result<PathBuf, FrontendError> {
    let in_context = context_dir.join(file);
    if trace.exists(&in_context) {
        return Ok(in_context);
    }
    let direct = PathBuf::from(file);
    if trace.exists(&direct) {
        return Ok(direct);
    }
    Err(FrontendError::Read(diag(
        format!(
            "build file `{file}` not found (looked for `{}` and `{file}` in the current directory)",
            in_context.display()
        ),
        None,
    )))
}

/// envd reads only the first line: `# syntax=v1` is v1, `# syntax=v0` is refused. envkit also
/// refuses any other declared version (`# syntax=v2`); a first line without `# syntax=` is v1,
/// as in envd.
fn check_syntax_version(file: &str, source: &str) -> Result<(), FrontendError> {
    let first = source.lines().next().unwrap_or("");
    if first.contains("# syntax=v1") {
        return Ok(());
    }
    let Some(at) = first.find("# syntax=") else {
        return Ok(());
    };
    let value: String = first[at + "# syntax=".len()..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    let end = at + "# syntax=".len() + value.len();
    let message = if value == "v0" {
        "`# syntax=v0` is not supported: envkit implements envd's v1 syntax only \
         (v0 is no longer supported in envd v1 either); use `# syntax=v1`"
            .to_string()
    } else {
        format!(
            "unsupported syntax version `{value}`: envkit implements envd's v1 syntax; use \
             `# syntax=v1` (v0 is not supported)"
        )
    };
    Err(FrontendError::UnsupportedVersion(diag(
        message,
        Some(Location::from_byte_span(file, source, at, end)),
    )))
}

/// A top-level binding: where it is, and whether it is a `def`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Binding {
    span: Span,
    is_def: bool,
}

/// Collects the module's global bindings, refusing a second binding of the same name (envd
/// sets `GlobalReassign = false`; the starlark crate would allow it).
fn check_globals(ast: &AstModule) -> Result<HashMap<String, Binding>, FrontendError> {
    let mut seen = HashMap::new();
    let mut stmts: Vec<&AstStmt> = Vec::new();
    flatten(ast.statement(), &mut stmts);
    for stmt in stmts {
        match &stmt.node {
            Stmt::Assign(assign) => {
                let mut names = Vec::new();
                target_names(&assign.lhs, &mut names);
                for (name, span) in names {
                    bind(ast, &mut seen, name, span, false)?;
                }
            }
            Stmt::AssignModify(target, _, _) => {
                if let AssignTarget::Identifier(id) = &target.node
                    && let Some(first) = seen.get(&id.node.ident)
                {
                    return Err(reassigned(ast, &id.node.ident, first, target.span));
                }
            }
            Stmt::Def(def) => bind(ast, &mut seen, &def.name.node.ident, def.name.span, true)?,
            _ => {}
        }
    }
    Ok(seen)
}

fn flatten<'a>(stmt: &'a AstStmt, out: &mut Vec<&'a AstStmt>) {
    match &stmt.node {
        Stmt::Statements(list) => list.iter().for_each(|s| flatten(s, out)),
        _ => out.push(stmt),
    }
}

fn target_names<'a>(target: &'a AstAssignTarget, out: &mut Vec<(&'a str, Span)>) {
    match &target.node {
        AssignTarget::Identifier(id) => out.push((&id.node.ident, id.span)),
        AssignTarget::Tuple(items) => items.iter().for_each(|t| target_names(t, out)),
        AssignTarget::Index(_) | AssignTarget::Dot(_, _) => {}
    }
}

fn bind(
    ast: &AstModule,
    seen: &mut HashMap<String, Binding>,
    name: &str,
    span: Span,
    is_def: bool,
) -> Result<(), FrontendError> {
    if let Some(first) = seen.get(name) {
        return Err(reassigned(ast, name, first, span));
    }
    seen.insert(name.to_string(), Binding { span, is_def });
    Ok(())
}

fn reassigned(ast: &AstModule, name: &str, first: &Binding, span: Span) -> FrontendError {
    let first = Location::from_file_span(&ast.file_span(first.span));
    FrontendError::Syntax(diag(
        format!(
            "cannot reassign global `{name}` (first bound at line {}); envd does not allow \
             re-assigning a global",
            first.line
        ),
        Some(Location::from_file_span(&ast.file_span(span))),
    ))
}

/// Turns a starlark error into a [`FrontendError`] of the right kind. `fallback` is used when
/// the crate gives no span (errors raised while calling the entry function from Rust).
pub(crate) fn from_starlark(
    e: starlark::Error,
    fallback: Option<&Location>,
    bad_calls: &BadCalls,
) -> FrontendError {
    use starlark::ErrorKind as K;

    let location = e
        .span()
        .map(Location::from_file_span)
        .or_else(|| fallback.cloned());
    let mut message = e.without_diagnostic().to_string();
    match e.kind() {
        K::Parser(_) => FrontendError::Syntax(diag(message, location)),
        K::Scope(_) => FrontendError::Name(diag(message, location)),
        K::Function(_) => {
            // The crate may report a missing parameter first; a v0-style keyword is the more
            // useful news, so name it and the accepted ones.
            if let Some(call) = e.span().and_then(|s| bad_calls.get(&s.span)) {
                message = call.message();
            }
            FrontendError::Argument(diag(message, location))
        }
        K::Native(inner) => match inner.downcast_ref::<BuiltinError>() {
            Some(BuiltinError::Invalid(_)) => FrontendError::Invalid(diag(message, location)),
            _ => FrontendError::Runtime(diag(message, location)),
        },
        K::Value(_) if message.contains("has no attribute") => {
            FrontendError::Name(diag(message, location))
        }
        K::Value(_) if message.contains("doesn't match") => {
            FrontendError::Argument(diag(message, location))
        }
        K::Fail(inner) => FrontendError::Runtime(diag(
            format!("fail: {}", inner.to_string().trim_start()),
            location,
        )),
        _ => FrontendError::Runtime(diag(message, location)),
    }
}

/// A call to an implemented builtin that passes keywords it does not accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadCall {
    callee: &'static str,
    accepted: &'static [&'static str],
    unexpected: Vec<String>,
}

impl BadCall {
    fn message(&self) -> String {
        let quote = |v: &[&str]| {
            v.iter()
                .map(|p| format!("`{p}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let unexpected: Vec<&str> = self.unexpected.iter().map(String::as_str).collect();
        format!(
            "unexpected keyword argument{} {} for `{}`; it accepts: {}",
            if unexpected.len() == 1 { "" } else { "s" },
            quote(&unexpected),
            self.callee,
            quote(self.accepted)
        )
    }
}

/// Such calls, by the span of the call expression (the span the crate reports them at).
pub(crate) type BadCalls = HashMap<Span, BadCall>;

fn bad_calls(ast: &AstModule) -> BadCalls {
    fn callee_name(e: &AstExpr) -> Option<String> {
        match &e.node {
            Expr::Identifier(id) => Some(id.node.ident.clone()),
            Expr::Dot(ns, attr) => Some(format!("{}.{}", callee_name(ns)?, attr.node)),
            _ => None,
        }
    }
    fn walk(e: &AstExpr, out: &mut BadCalls) {
        if let Expr::Call(callee, args) = &e.node {
            let name = callee_name(callee);
            let known = builtins::SIGNATURES
                .iter()
                .find(|(n, _)| Some(*n) == name.as_deref());
            if let Some((callee, accepted)) = known {
                let unexpected: Vec<String> = args
                    .args
                    .iter()
                    .filter_map(|a| a.name())
                    .filter(|n| !accepted.contains(n))
                    .map(str::to_string)
                    .collect();
                if !unexpected.is_empty() {
                    out.insert(
                        e.span,
                        BadCall {
                            callee,
                            accepted,
                            unexpected,
                        },
                    );
                }
            }
        }
        e.node.visit_expr(|child| walk(child, out));
    }
    let mut out = BadCalls::new();
    ast.statement().visit_expr(|e| walk(e, &mut out));
    out
}

/// Parses a module in envd's dialect and checks its globals: the AST, its top-level
/// bindings, and the calls that pass keywords their builtin does not accept.
pub(crate) fn parse_checked(
    shown: &str,
    source: String,
) -> Result<(AstModule, HashMap<String, Binding>, BadCalls), FrontendError> {
    let ast = AstModule::parse(shown, source, &dialect())
        .map_err(|e| from_starlark(e, None, &BadCalls::new()))?;
    let bindings = check_globals(&ast)?;
    let bad_calls = bad_calls(&ast);
    Ok((ast, bindings, bad_calls))
}

/// Runs each prelude file (the user's `config.envd`), then reads `file` (see [`resolve`]),
/// runs its top level, then calls `func()`.
pub(crate) fn run(
    context_dir: &Path,
    file: &str,
    func: &str,
    options: &super::modules::Options,
) -> Result<Environment, FrontendError> {
    run_traced(context_dir, file, func, options).map(|(env, _)| env)
}

/// [`run`], also returning what the evaluation read and printed.
pub(crate) fn run_traced(
    context_dir: &Path,
    file: &str,
    func: &str,
    options: &super::modules::Options,
) -> Result<(Environment, Trace), FrontendError> {
    let trace = Trace::default();
    let path = resolve(context_dir, file, &trace)?;
    let shown = path.display().to_string();
    let source = trace.read_to_string(&path).map_err(|e| {
        FrontendError::Read(diag(format!("cannot read build file `{shown}`: {e}"), None))
    })?;
    check_syntax_version(&shown, &source)?;
    let start = Location::from_byte_span(&shown, &source, 0, 0);
    let (ast, bindings, bad_calls) = parse_checked(&shown, source)?;
    let entry_location = bindings
        .get(func)
        .map(|b| Location::from_file_span(&ast.file_span(b.span)));

    let context = if context_dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        context_dir
    };
    let context_abs = std::path::absolute(context)
        .unwrap_or_else(|_| context.to_path_buf())
        .display()
        .to_string();
    let recorder = Recorder::new(context_abs, options.cache_dir.clone(), trace);
    for p in &options.prelude {
        recorder.exec_module(p)?;
    }

    Module::with_temp_heap(|module| -> Result<(), FrontendError> {
        let globals = recorder.globals.clone();
        let mut eval = Evaluator::new(&module);
        eval.extra = Some(&recorder);
        eval.set_loader(&recorder);
        eval.set_print_handler(&recorder.trace);
        eval.eval_module(ast, &globals).map_err(|e| {
            recorder
                .failure
                .borrow_mut()
                .take()
                .unwrap_or_else(|| from_starlark(e, Some(&start), &bad_calls))
        })?;
        let Some(entry) = module.get(func) else {
            return Err(FrontendError::MissingEntry(diag(
                format!("{file} doesn't have function `{func}`"),
                Some(start.clone()),
            )));
        };
        let is_def = bindings.get(func).is_some_and(|b| b.is_def);
        let predeclared: Vec<Value> = globals.iter().map(|(_, v)| v.to_value()).collect();
        let is_function =
            entry.get_type() == "function" && !is_builtin(entry, &predeclared, module.heap(), 0);
        if !is_def && !is_function {
            let what = if entry.get_type() == "function" {
                "a builtin".to_string()
            } else {
                format!("of type `{}`", entry.get_type())
            };
            return Err(FrontendError::NotAFunction(diag(
                format!("`{func}` is not a function (it is {what})"),
                entry_location.clone().or_else(|| Some(start.clone())),
            )));
        }
        eval.eval_function(entry, &[], &[]).map_err(|e| {
            if let Some(f) = recorder.failure.borrow_mut().take() {
                return f;
            }
            if e.span().is_none() && matches!(e.kind(), starlark::ErrorKind::Function(_)) {
                // Binding the (absent) arguments of the entry itself failed.
                return FrontendError::Argument(diag(
                    format!("the entry function `{func}` must be callable with no arguments"),
                    entry_location.clone().or_else(|| Some(start.clone())),
                ));
            }
            from_starlark(e, entry_location.as_ref().or(Some(&start)), &bad_calls)
        })?;
        Ok(())
    })?;

    let trace = recorder.trace;
    let env = recorder.env.into_inner();
    if let Err(e) = env.validate() {
        let site = match e {
            IrError::EntrypointInDevMode => recorder
                .entrypoint_site
                .into_inner()
                .map(|s| Location::from_file_span(&s)),
            _ => None,
        };
        return Err(FrontendError::Invalid(diag(
            e.to_string(),
            site.or(entry_location).or(Some(start)),
        )));
    }
    Ok((env, trace))
}

/// Whether `value` is one of the predeclared native functions (envd calls only a Starlark
/// `def` or `lambda`, not a builtin bound to the entry name). Looks into namespaces, two deep.
fn is_builtin<'v>(value: Value<'v>, candidates: &[Value<'v>], heap: Heap<'v>, depth: u32) -> bool {
    for &candidate in candidates {
        if candidate.ptr_eq(value) {
            return true;
        }
        if depth < 2 && candidate.get_type() == "namespace" {
            let members: Vec<Value<'v>> = candidate
                .dir_attr()
                .into_iter()
                .filter_map(|a| candidate.get_attr(&a, heap).ok().flatten())
                .collect();
            if is_builtin(value, &members, heap, depth + 1) {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Result<AstModule, FrontendError> {
        AstModule::parse("t.envd", src.to_string(), &dialect())
            .map_err(|e| from_starlark(e, None, &BadCalls::new()))
    }

    #[test]
    fn header_v0_is_refused_on_line_one() {
        let err = check_syntax_version("b.envd", "# syntax=v0\ndef build():\n    pass\n");
        assert!(
            matches!(err, Err(FrontendError::UnsupportedVersion(_))),
            "{err:?}"
        );
        let ok = check_syntax_version("b.envd", "\n# syntax=v0\n");
        assert!(ok.is_ok(), "only the first line counts");
        assert!(check_syntax_version("b.envd", "").is_ok());
        assert!(check_syntax_version("b.envd", "# syntax=v1\n").is_ok());
        let other = check_syntax_version("b.envd", "# syntax=v2\n");
        assert!(
            matches!(&other, Err(FrontendError::UnsupportedVersion(d)) if d.message.contains("`v2`")),
            "{other:?}"
        );
        assert!(check_syntax_version("b.envd", "# a comment\n").is_ok());
    }

    #[test]
    fn global_reassignment_is_refused() -> Result<(), FrontendError> {
        let ast = parse("x = 1\ny = 2\nx = 3\n")?;
        let err = check_globals(&ast).err();
        assert!(matches!(&err, Some(FrontendError::Syntax(_))), "{err:?}");
        assert_eq!(err.and_then(|e| e.line_col()), Some((3, 1)));
        Ok(())
    }

    #[test]
    fn def_and_assign_share_one_namespace() -> Result<(), FrontendError> {
        let ast = parse("def build():\n    pass\nbuild = 1\n")?;
        assert!(check_globals(&ast).is_err());
        let ast = parse("a, b = 1, 2\nb += 1\n")?;
        assert_eq!(
            check_globals(&ast).err().and_then(|e| e.line_col()),
            Some((2, 1))
        );
        Ok(())
    }

    #[test]
    fn locals_may_be_reassigned() -> Result<(), FrontendError> {
        let ast = parse("def f():\n    x = 1\n    x = 2\n    return x\n")?;
        assert!(check_globals(&ast).is_ok());
        Ok(())
    }

    #[test]
    fn calls_with_unknown_keywords_are_found() -> Result<(), FrontendError> {
        let ast = parse(
            "base(os=\"u\", language=\"py\")\ndef build():\n    x = [install . apt_packages(names=[])]\n    mine(os=1)\n    base(image=\"x\")\n",
        )?;
        let mut found: Vec<String> = bad_calls(&ast).values().map(BadCall::message).collect();
        found.sort();
        assert_eq!(
            found,
            [
                "unexpected keyword argument `names` for `install.apt_packages`; it accepts: `name`",
                "unexpected keyword arguments `os`, `language` for `base`; it accepts: `image`, `dev`",
            ]
        );
        Ok(())
    }
}
