//! JSON of ops and metadata in the shape `buildctl debug dump-llb` prints: Go's
//! `encoding/json` of the generated structs (proto field names as keys, `omitempty`, enums as
//! numbers, bytes as base64, `<>&` escaped), with BuildKit's custom forms for `Op`,
//! `FileAction` and `UserOpt`.

use std::collections::BTreeMap;

use crate::pb;

/// Appends `s` as a JSON string the way Go's `encoding/json` writes it.
pub(crate) fn push_go_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // Go 1.22 and later (BuildKit v0.32.2 is built with 1.26).
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

pub(crate) fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        s.push(T[(n >> 18) as usize & 63] as char);
        s.push(T[(n >> 12) as usize & 63] as char);
        s.push(if chunk.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        s.push(if chunk.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    s
}

/// A JSON object writer with Go's `omitempty` helpers.
struct Obj<'a> {
    out: &'a mut String,
    first: bool,
}

impl<'a> Obj<'a> {
    fn new(out: &'a mut String) -> Obj<'a> {
        out.push('{');
        Obj { out, first: true }
    }
    fn key(&mut self, k: &str) {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        push_go_string(self.out, k);
        self.out.push(':');
    }
    fn str(&mut self, k: &str, v: &str) {
        if !v.is_empty() {
            self.key(k);
            push_go_string(self.out, v);
        }
    }
    fn int(&mut self, k: &str, v: i64) {
        if v != 0 {
            self.key(k);
            self.out.push_str(&v.to_string());
        }
    }
    fn uint(&mut self, k: &str, v: u64) {
        if v != 0 {
            self.key(k);
            self.out.push_str(&v.to_string());
        }
    }
    fn int_always(&mut self, k: &str, v: i64) {
        self.key(k);
        self.out.push_str(&v.to_string());
    }
    fn bool(&mut self, k: &str, v: bool) {
        if v {
            self.key(k);
            self.out.push_str("true");
        }
    }
    fn strs(&mut self, k: &str, v: &[String]) {
        if !v.is_empty() {
            self.key(k);
            self.out.push('[');
            for (i, s) in v.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                push_go_string(self.out, s);
            }
            self.out.push(']');
        }
    }
    fn str_map(&mut self, k: &str, m: &BTreeMap<String, String>) {
        if !m.is_empty() {
            self.key(k);
            let mut o = Obj::new(self.out);
            for (mk, mv) in m {
                o.key(mk);
                push_go_string(o.out, mv);
            }
            o.end();
        }
    }
    fn bool_map(&mut self, k: &str, m: &BTreeMap<String, bool>) {
        if !m.is_empty() {
            self.key(k);
            let mut o = Obj::new(self.out);
            for (mk, mv) in m {
                o.key(mk);
                o.out.push_str(if *mv { "true" } else { "false" });
            }
            o.end();
        }
    }
    fn obj<T>(&mut self, k: &str, v: &Option<T>, f: impl FnOnce(&mut String, &T)) {
        if let Some(v) = v {
            self.key(k);
            f(self.out, v);
        }
    }
    fn list<T>(&mut self, k: &str, v: &[T], f: impl Fn(&mut String, &T)) {
        if !v.is_empty() {
            self.key(k);
            self.out.push('[');
            for (i, x) in v.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                f(self.out, x);
            }
            self.out.push(']');
        }
    }
    fn end(self) {
        self.out.push('}');
    }
}

fn platform(out: &mut String, p: &pb::Platform) {
    let mut o = Obj::new(out);
    o.str("Architecture", &p.architecture);
    o.str("OS", &p.os);
    o.str("Variant", &p.variant);
    o.str("OSVersion", &p.os_version);
    o.strs("OSFeatures", &p.os_features);
    o.end();
}

fn input(out: &mut String, i: &pb::Input) {
    let mut o = Obj::new(out);
    o.str("digest", &i.digest);
    o.int("index", i.index);
    o.end();
}

fn meta(out: &mut String, m: &pb::Meta) {
    let mut o = Obj::new(out);
    o.strs("args", &m.args);
    o.strs("env", &m.env);
    o.str("cwd", &m.cwd);
    o.str("user", &m.user);
    o.obj("proxy_env", &m.proxy_env, |out, p| {
        let mut o = Obj::new(out);
        o.str("http_proxy", &p.http_proxy);
        o.str("https_proxy", &p.https_proxy);
        o.str("ftp_proxy", &p.ftp_proxy);
        o.str("no_proxy", &p.no_proxy);
        o.str("all_proxy", &p.all_proxy);
        o.end();
    });
    o.list("extraHosts", &m.extra_hosts, |out, h| {
        let mut o = Obj::new(out);
        o.str("Host", &h.host);
        o.str("IP", &h.ip);
        o.end();
    });
    o.str("hostname", &m.hostname);
    o.list("ulimit", &m.ulimit, |out, u| {
        let mut o = Obj::new(out);
        o.str("Name", &u.name);
        o.int("Soft", u.soft);
        o.int("Hard", u.hard);
        o.end();
    });
    o.str("cgroupParent", &m.cgroup_parent);
    o.bool("removeMountStubsRecursive", m.remove_mount_stubs_recursive);
    if !m.valid_exit_codes.is_empty() {
        o.key("validExitCodes");
        let v: Vec<String> = m.valid_exit_codes.iter().map(|c| c.to_string()).collect();
        o.out.push('[');
        o.out.push_str(&v.join(","));
        o.out.push(']');
    }
    o.end();
}

fn mount(out: &mut String, m: &pb::Mount) {
    let mut o = Obj::new(out);
    o.int("input", m.input);
    o.str("selector", &m.selector);
    o.str("dest", &m.dest);
    o.int("output", m.output);
    o.bool("readonly", m.readonly);
    o.int("mountType", i64::from(m.mount_type));
    o.obj("TmpfsOpt", &m.tmpfs_opt, |out, t| {
        let mut o = Obj::new(out);
        o.int("size", t.size);
        o.end();
    });
    o.obj("cacheOpt", &m.cache_opt, |out, c| {
        let mut o = Obj::new(out);
        o.str("ID", &c.id);
        o.int("sharing", i64::from(c.sharing));
        o.end();
    });
    o.obj("secretOpt", &m.secret_opt, |out, s| {
        let mut o = Obj::new(out);
        o.str("ID", &s.id);
        o.uint("uid", u64::from(s.uid));
        o.uint("gid", u64::from(s.gid));
        o.uint("mode", u64::from(s.mode));
        o.bool("optional", s.optional);
        o.end();
    });
    o.obj("SSHOpt", &m.ssh_opt, |out, s| {
        let mut o = Obj::new(out);
        o.str("ID", &s.id);
        o.uint("uid", u64::from(s.uid));
        o.uint("gid", u64::from(s.gid));
        o.uint("mode", u64::from(s.mode));
        o.bool("optional", s.optional);
        o.end();
    });
    o.str("resultID", &m.result_id);
    o.int("contentCache", i64::from(m.content_cache));
    o.end();
}

fn exec(out: &mut String, e: &pb::ExecOp) {
    let mut o = Obj::new(out);
    o.obj("meta", &e.meta, meta);
    o.list("mounts", &e.mounts, mount);
    o.int("network", i64::from(e.network));
    o.int("security", i64::from(e.security));
    o.list("secretenv", &e.secretenv, |out, s| {
        let mut o = Obj::new(out);
        o.str("ID", &s.id);
        o.str("name", &s.name);
        o.bool("optional", s.optional);
        o.end();
    });
    o.list("cdiDevices", &e.cdi_devices, |out, d| {
        let mut o = Obj::new(out);
        o.str("name", &d.name);
        o.bool("optional", d.optional);
        o.end();
    });
    o.end();
}

fn user_opt(out: &mut String, u: &pb::UserOpt) {
    let mut o = Obj::new(out);
    o.key("User");
    let mut inner = Obj::new(o.out);
    match &u.user {
        Some(pb::user_opt::User::ByName(n)) => {
            inner.key("byName");
            let mut no = Obj::new(inner.out);
            no.str("name", &n.name);
            no.int("input", n.input);
            no.end();
        }
        Some(pb::user_opt::User::ById(id)) => inner.uint("byId", u64::from(*id)),
        None => {}
    }
    inner.end();
    o.end();
}

fn chown(out: &mut String, c: &pb::ChownOpt) {
    let mut o = Obj::new(out);
    o.obj("user", &c.user, user_opt);
    o.obj("group", &c.group, user_opt);
    o.end();
}

fn file_action(out: &mut String, a: &pb::FileAction) {
    use pb::file_action::Action;
    let mut o = Obj::new(out);
    o.int_always("input", a.input);
    o.int_always("secondaryInput", a.secondary_input);
    o.int_always("output", a.output);
    o.key("Action");
    let mut ao = Obj::new(o.out);
    match &a.action {
        Some(Action::Copy(_)) => ao.key("copy"),
        Some(Action::Mkfile(_)) => ao.key("mkfile"),
        Some(Action::Mkdir(_)) => ao.key("mkdir"),
        Some(Action::Rm(_)) => ao.key("rm"),
        // BuildKit's JSON form has no key for symlinks: it prints `{}`.
        Some(Action::Symlink(_)) | None => {}
    }
    if let Some(action) = &a.action
        && !matches!(action, Action::Symlink(_))
    {
        action_body(ao.out, action);
    }
    ao.end();
    o.end();
}

/// One file action's own message (`FileActionCopy`, `FileActionMkfile`, ...) as Go's
/// `encoding/json` writes it.
pub(crate) fn action_body(out: &mut String, action: &pb::file_action::Action) {
    use pb::file_action::Action;
    match action {
        Action::Copy(c) => {
            let mut co = Obj::new(out);
            co.str("src", &c.src);
            co.str("dest", &c.dest);
            co.obj("owner", &c.owner, chown);
            co.int("mode", i64::from(c.mode));
            co.bool("followSymlink", c.follow_symlink);
            co.bool("dirCopyContents", c.dir_copy_contents);
            co.bool(
                "attemptUnpackDockerCompatibility",
                c.attempt_unpack_docker_compatibility,
            );
            co.bool("createDestPath", c.create_dest_path);
            co.bool("allowWildcard", c.allow_wildcard);
            co.bool("allowEmptyWildcard", c.allow_empty_wildcard);
            co.int("timestamp", c.timestamp);
            co.strs("include_patterns", &c.include_patterns);
            co.strs("exclude_patterns", &c.exclude_patterns);
            co.bool(
                "alwaysReplaceExistingDestPaths",
                c.always_replace_existing_dest_paths,
            );
            co.str("modeStr", &c.mode_str);
            co.strs("required_paths", &c.required_paths);
            co.end();
        }
        Action::Mkfile(m) => {
            let mut mo = Obj::new(out);
            mo.str("path", &m.path);
            mo.int("mode", i64::from(m.mode));
            if !m.data.is_empty() {
                mo.key("data");
                push_go_string(mo.out, &base64(&m.data));
            }
            mo.obj("owner", &m.owner, chown);
            mo.int("timestamp", m.timestamp);
            mo.end();
        }
        Action::Mkdir(m) => {
            let mut mo = Obj::new(out);
            mo.str("path", &m.path);
            mo.int("mode", i64::from(m.mode));
            mo.bool("makeParents", m.make_parents);
            mo.obj("owner", &m.owner, chown);
            mo.int("timestamp", m.timestamp);
            mo.end();
        }
        Action::Rm(r) => {
            let mut ro = Obj::new(out);
            ro.str("path", &r.path);
            ro.bool("allowNotFound", r.allow_not_found);
            ro.bool("allowWildcard", r.allow_wildcard);
            ro.end();
        }
        Action::Symlink(l) => {
            let mut lo = Obj::new(out);
            lo.str("oldpath", &l.oldpath);
            lo.str("newpath", &l.newpath);
            lo.obj("owner", &l.owner, chown);
            lo.int("timestamp", l.timestamp);
            lo.end();
        }
    }
}

/// `ExecOp` as Go's `encoding/json` writes it.
pub(crate) fn exec_json(e: &pb::ExecOp) -> String {
    let mut s = String::with_capacity(256);
    exec(&mut s, e);
    s
}

/// `MergeOp` as Go's `encoding/json` writes it.
pub(crate) fn merge_json(out: &mut String, m: &pb::MergeOp) {
    let mut mo = Obj::new(out);
    mo.list("inputs", &m.inputs, |out, i| {
        let mut o = Obj::new(out);
        o.int("input", i.input);
        o.end();
    });
    mo.end();
}

/// `DiffOp` as Go's `encoding/json` writes it.
pub(crate) fn diff_json(out: &mut String, d: &pb::DiffOp) {
    let mut d_o = Obj::new(out);
    d_o.obj("lower", &d.lower, |out, l| {
        let mut o = Obj::new(out);
        o.int("input", l.input);
        o.end();
    });
    d_o.obj("upper", &d.upper, |out, u| {
        let mut o = Obj::new(out);
        o.int("input", u.input);
        o.end();
    });
    d_o.end();
}

/// One op as JSON (`Op` field of a dump-llb line).
pub fn op_json(op: &pb::Op) -> String {
    use pb::op::Op as K;
    let mut s = String::with_capacity(256);
    let mut o = Obj::new(&mut s);
    o.list("inputs", &op.inputs, input);
    o.key("Op");
    let mut body = Obj::new(o.out);
    match &op.op {
        Some(K::Exec(e)) => {
            body.key("exec");
            exec(body.out, e);
        }
        Some(K::Source(src)) => {
            body.key("source");
            let mut so = Obj::new(body.out);
            so.str("identifier", &src.identifier);
            so.str_map("attrs", &src.attrs);
            so.end();
        }
        Some(K::File(f)) => {
            body.key("file");
            let mut fo = Obj::new(body.out);
            fo.list("actions", &f.actions, file_action);
            fo.end();
        }
        Some(K::Build(b)) => {
            body.key("build");
            let mut bo = Obj::new(body.out);
            bo.int("builder", b.builder);
            bo.str_map("attrs", &b.attrs);
            bo.end();
        }
        Some(K::Merge(m)) => {
            body.key("merge");
            merge_json(body.out, m);
        }
        Some(K::Diff(d)) => {
            body.key("diff");
            diff_json(body.out, d);
        }
        Some(K::Passthrough(p)) => {
            body.key("passthrough");
            let mut po = Obj::new(body.out);
            po.str("id", &p.id);
            if !p.outputs.is_empty() {
                po.key("outputs");
                let v: Vec<String> = p.outputs.iter().map(|x| x.to_string()).collect();
                po.out.push('[');
                po.out.push_str(&v.join(","));
                po.out.push(']');
            }
            po.end();
        }
        None => {}
    }
    body.end();
    o.obj("platform", &op.platform, platform);
    o.obj("constraints", &op.constraints, |out, c| {
        let mut o = Obj::new(out);
        o.strs("filter", &c.filter);
        o.end();
    });
    o.end();
    s
}

/// `OpMetadata` as JSON.
pub fn metadata_json(m: &pb::OpMetadata) -> String {
    let mut s = String::new();
    let mut o = Obj::new(&mut s);
    o.bool("ignore_cache", m.ignore_cache);
    o.str_map("description", &m.description);
    o.obj("export_cache", &m.export_cache, |out, e| {
        let mut o = Obj::new(out);
        o.bool("Value", e.value);
        o.end();
    });
    o.bool_map("caps", &m.caps);
    o.obj("progress_group", &m.progress_group, |out, p| {
        let mut o = Obj::new(out);
        o.str("id", &p.id);
        o.str("name", &p.name);
        o.bool("weak", p.weak);
        o.end();
    });
    o.obj("linux_resources", &m.linux_resources, |out, r| {
        let mut o = Obj::new(out);
        o.int("memory", r.memory);
        o.int("memorySwap", r.memory_swap);
        o.uint("cpuShares", r.cpu_shares);
        o.uint("cpuPeriod", r.cpu_period);
        o.int("cpuQuota", r.cpu_quota);
        o.str("cpusetCpus", &r.cpuset_cpus);
        o.str("cpusetMems", &r.cpuset_mems);
        o.end();
    });
    o.end();
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_escaping_and_base64() {
        let mut s = String::new();
        push_go_string(&mut s, "a > b && \"c\"\n");
        assert_eq!(s, r#""a \u003e b \u0026\u0026 \"c\"\n""#);
        // Go 1.22's short forms for backspace and form feed; other controls as \u00XX.
        let mut s = String::new();
        push_go_string(&mut s, "\u{8}\u{c}\u{1}");
        assert_eq!(s, r#""\b\f\u0001""#);
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"hello world\n"), "aGVsbG8gd29ybGQK");
    }
}
