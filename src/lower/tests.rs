//! Unit tests of lowering.

use super::*;
use crate::ir::{Copy, PipIndex, RunGroup};
use crate::pb;

fn opts() -> LowerOptions {
    LowerOptions {
        context_dir: PathBuf::from("/work/proj"),
        env_name: "proj".into(),
        owner: (1000, 1000),
        platform: Platform::linux_amd64(),
        // The chain shape: these tests walk the chain stage by stage.
        target: Target::Dockerd,
        ssh_public_key: "ssh-ed25519 AAAAtest user@host\n".into(),
        ssh_public_key_path: "/home/user/.config/envkit/id_envkit.pub".into(),
        ca_bundle: None,
        proxy_env: None,
        base_resolve: None,
    }
}

fn python_base() -> BaseImage {
    BaseImage {
        env: vec![
            "PATH=/usr/local/bin:/usr/bin:/bin".into(),
            "LANG=C.UTF-8".into(),
        ],
        entrypoint: None,
        cmd: Some(vec!["python3".into()]),
        user: None,
        working_dir: None,
    }
}

fn example() -> Environment {
    Environment {
        image: "python:3.11-slim".into(),
        apt_packages: vec!["curl".into(), "git".into()],
        python_packages: vec![vec!["six".into()], vec!["numpy".into(), "rich".into()]],
        copies: vec![Copy {
            source: "hello.py".into(),
            target: "/opt/hello.py".into(),
            image: None,
        }],
        environ: [("GREETING".to_string(), "hi".to_string())].into(),
        extra_path: vec!["/opt/tools".into()],
        run: vec![RunGroup {
            commands: vec!["echo a".into(), "echo b > /x".into()],
            mount_host: false,
        }],
        ..Environment::default()
    }
}

/// The ops of the chain that ends in the head, bottom first (inputs of exec/file ops that
/// are not the root or the base are skipped).
fn chain(l: &Lowered) -> Vec<pb::Op> {
    let g = llb::load(&l.definition.to_bytes()).unwrap();
    let mut out = Vec::new();
    let mut at = g.head;
    while let Some(i) = at {
        let v = &g.vertices[i];
        out.push(v.op.clone());
        at = match &v.op.op {
            Some(pb::op::Op::Exec(e)) => e
                .mounts
                .iter()
                .find(|m| m.dest == "/")
                .and_then(|m| usize::try_from(m.input).ok())
                .map(|k| v.inputs[k]),
            Some(pb::op::Op::File(f)) => f
                .actions
                .first()
                .and_then(|a| usize::try_from(a.input).ok())
                .map(|k| v.inputs[k]),
            _ => None,
        };
    }
    out.reverse();
    out
}

fn args(op: &pb::Op) -> Vec<String> {
    match &op.op {
        Some(pb::op::Op::Exec(e)) => e.meta.as_ref().unwrap().args.clone(),
        _ => panic!("not an exec: {op:?}"),
    }
}

#[test]
fn stages_come_in_envds_order() {
    let l = lower(&example(), &python_base(), &opts()).unwrap();
    let ops = chain(&l);
    let kinds: Vec<&str> = ops
        .iter()
        .map(|o| match &o.op {
            Some(pb::op::Op::Source(_)) => "source",
            Some(pb::op::Op::Exec(_)) => "exec",
            Some(pb::op::Op::File(_)) => "file",
            _ => "other",
        })
        .collect();
    assert_eq!(
        kinds,
        ["source", "exec", "exec", "exec", "exec", "file", "exec"]
    );
    let Some(pb::op::Op::Source(src)) = &ops[0].op else {
        unreachable!()
    };
    assert_eq!(
        src.identifier,
        "docker-image://docker.io/library/python:3.11-slim"
    );
    assert_eq!(
        args(&ops[1]),
        [
            "bash",
            "-c",
            "apt-get update && apt-get install -y --no-install-recommends curl git"
        ]
    );
    assert_eq!(args(&ops[2]), ["mkdir", "-p", "/root/.cache/pip"]);
    assert_eq!(args(&ops[3]), ["python", "-m", "pip", "install", "six"]);
    assert_eq!(
        args(&ops[4]),
        ["python", "-m", "pip", "install", "numpy", "rich"]
    );
    assert_eq!(
        args(&ops[6]),
        ["bash", "-c", "set -euo pipefail\necho a\necho b > /x\n"]
    );
    let Some(pb::op::Op::Exec(run)) = &ops[6].op else {
        unreachable!()
    };
    assert_eq!(run.meta.as_ref().unwrap().cwd, "/home/envd/proj");
}

#[test]
fn apt_and_pip_use_envds_cache_mounts() {
    let l = lower(&example(), &python_base(), &opts()).unwrap();
    let ops = chain(&l);
    let cache = |op: &pb::Op| -> Vec<(String, String, i32)> {
        let Some(pb::op::Op::Exec(e)) = &op.op else {
            panic!()
        };
        e.mounts
            .iter()
            .filter_map(|m| {
                m.cache_opt
                    .as_ref()
                    .map(|c| (m.dest.clone(), c.id.clone(), c.sharing))
            })
            .collect()
    };
    let shared = pb::CacheSharingOpt::Shared as i32;
    assert_eq!(
        cache(&ops[1]),
        [
            (
                "/var/cache/apt".to_string(),
                "/var/cache/apt/proj-cpu".to_string(),
                shared
            ),
            (
                "/var/lib/apt".to_string(),
                "/var/lib/apt/proj-cpu".to_string(),
                shared
            ),
        ]
    );
    assert_eq!(
        cache(&ops[3]),
        [(
            "/root/.cache/pip".to_string(),
            "/root/.cache/pip/proj-cpu".to_string(),
            shared
        )]
    );
}

#[test]
fn build_steps_see_envds_environment_and_the_base_images() {
    let l = lower(&example(), &python_base(), &opts()).unwrap();
    let ops = chain(&l);
    let Some(pb::op::Op::Exec(e)) = &ops[1].op else {
        unreachable!()
    };
    let env = &e.meta.as_ref().unwrap().env;
    for want in [
        "DEBIAN_FRONTEND=noninteractive",
        "LC_ALL=C.UTF-8",
        "LANG=C.UTF-8",
        "GREETING=hi",
        // envd puts the base image's PATH into the build environment as it is.
        "PATH=/usr/local/bin:/usr/bin:/bin",
    ] {
        assert!(env.iter().any(|x| x == want), "{want} not in {env:?}");
    }
}

#[test]
fn image_config_follows_envd() {
    let l = lower(&example(), &python_base(), &opts()).unwrap();
    let img = &l.image;
    assert_eq!(
        img.env,
        [
            "GREETING=hi",
            "LANG=C.UTF-8",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/opt/tools",
            "LC_ALL=C.UTF-8",
            "LANG=C.UTF-8",
        ]
    );
    // envd's config has no Cmd and takes the base's entrypoint (none here).
    assert_eq!(img.entrypoint, Some(vec![]));
    assert_eq!(img.cmd, None);
    let label = |k: &str| img.labels[&format!("ai.tensorchord.envd.{k}")].clone();
    assert_eq!(label("syntax.version"), "v1");
    assert_eq!(label("apt.packages"), r#"["curl","git"]"#);
    assert_eq!(label("pypi.commands"), r#"["six","numpy","rich"]"#);
    assert_eq!(label("ports"), r#"[{"name":"ssh","port":2222}]"#);
    assert_eq!(label("container.name"), "proj");
    assert_eq!(label("build.context"), "/work/proj");
    assert_eq!(
        label("graph.runtime"),
        r#"{"environ":{"GREETING":"hi","LANG":"C.UTF-8","PATH":"/usr/local/bin:/usr/bin:/bin"},"env_paths":["/usr/local/sbin","/usr/local/bin","/usr/sbin","/usr/bin","/sbin","/bin","/opt/tools"]}"#
    );
}

#[test]
fn entrypoint_wins_over_the_base_images() {
    let env = Environment {
        entrypoint: vec!["python3".into(), "-m".into(), "http.server".into()],
        ..example()
    };
    let base = BaseImage {
        entrypoint: Some(vec!["/docker-entrypoint.sh".into()]),
        user: Some("app".into()),
        working_dir: Some("/srv".into()),
        ..python_base()
    };
    let img = lower(&env, &base, &opts()).unwrap().image;
    assert_eq!(
        img.entrypoint,
        Some(vec!["python3".into(), "-m".into(), "http.server".into()])
    );
    assert_eq!(img.user.as_deref(), Some("app"));
    assert_eq!(img.working_dir.as_deref(), Some("/srv"));
    let img = lower(&example(), &base, &opts()).unwrap().image;
    assert_eq!(img.entrypoint, Some(vec!["/docker-entrypoint.sh".into()]));
}

#[test]
fn apt_source_and_pip_index_are_written_as_files() {
    let env = Environment {
        apt_source: Some("deb http://mirror/debian bookworm main\n".into()),
        pip_index: Some(PipIndex {
            url: "https://idx.example/simple".into(),
            extra_url: "https://user:pw@extra.example:8443/simple".into(),
            trust: true,
        }),
        ..example()
    };
    let l = lower(&env, &python_base(), &opts()).unwrap();
    let files: Vec<(String, Vec<u8>, Option<pb::ChownOpt>)> = chain(&l)
        .iter()
        .filter_map(|o| match &o.op {
            Some(pb::op::Op::File(f)) => match &f.actions[0].action {
                Some(pb::file_action::Action::Mkfile(m)) => {
                    Some((m.path.clone(), m.data.clone(), m.owner.clone()))
                }
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(files.len(), 2);
    assert_eq!(files[0].0, "/etc/apt/sources.list");
    assert_eq!(files[0].1, b"deb http://mirror/debian bookworm main\n");
    assert_eq!(files[1].0, "/etc/pip.conf");
    assert_eq!(
        String::from_utf8_lossy(&files[1].1),
        "\n[global]\nindex-url=https://idx.example/simple\n\
         extra-index-url=https://user:pw@extra.example:8443/simple\n\
         trusted-host=idx.example extra.example\n\n[install]\nsrc = /tmp\n"
    );
    assert!(files[1].2.is_some(), "pip.conf is chowned to the owner");
}

#[test]
fn buildkitd_joins_the_package_branches_with_merge_and_diff() {
    let o = LowerOptions {
        target: Target::Buildkitd,
        ..opts()
    };
    let l = lower(&example(), &python_base(), &o).unwrap();
    let g = llb::load(&l.definition.to_bytes()).unwrap();
    let merges: Vec<&llb::Vertex> = g
        .vertices
        .iter()
        .filter(|v| matches!(v.op.op, Some(pb::op::Op::Merge(_))))
        .collect();
    assert_eq!(merges.len(), 1);
    assert_eq!(
        merges[0].metadata.description["llb.customname"],
        "[internal] language environment and system packages"
    );
    assert_eq!(merges[0].op.inputs.len(), 3);
    let diffs = g
        .vertices
        .iter()
        .filter(|v| matches!(v.op.op, Some(pb::op::Op::Diff(_))))
        .count();
    assert_eq!(diffs, 2);
    assert!(Target::Embedded.merge_op() && !Target::Dockerd.merge_op());
    // opts() is the dockerd shape: a chain without Merge/Diff.
    let l = lower(&example(), &python_base(), &opts()).unwrap();
    let g = llb::load(&l.definition.to_bytes()).unwrap();
    assert!(g.vertices.iter().all(|v| !matches!(
        v.op.op,
        Some(pb::op::Op::Merge(_)) | Some(pb::op::Op::Diff(_))
    )));
}

#[test]
fn the_same_environment_gives_the_same_bytes() {
    let a = lower(&example(), &python_base(), &opts()).unwrap();
    let b = lower(&example(), &python_base(), &opts()).unwrap();
    assert_eq!(a.definition.to_bytes(), b.definition.to_bytes());
}

#[test]
fn dev_mode_adds_envds_prelude_user_services_and_config() {
    use crate::ir::LanguageName as L;
    let env = Environment {
        dev: true,
        shell: "zsh".into(),
        jupyter: Some(crate::ir::JupyterConfig::default()),
        runtime_init: vec![vec!["echo a".into(), "echo b".into()]],
        runtime_daemon: vec![vec!["python3".into(), "-m".into(), "http.server".into()]],
        runtime_expose: vec![crate::ir::Expose {
            envd_port: 8000,
            host_port: 0,
            service: "web".into(),
            listen_addr: "127.0.0.1".into(),
        }],
        git_config: Some(crate::ir::GitConfig {
            name: "Ada".into(),
            email: "ada@example.com".into(),
            editor: "vim".into(),
        }),
        vscode_plugins: vec![crate::ir::VscodePlugin::parse("ms-python.python").unwrap()],
        ..with_langs(&[(L::Python, None)])
    };
    let l = lower(&env, &BaseImage::default(), &opts()).unwrap();
    let n = names(&l);
    for want in [
        "[internal] install built-in packages",
        "[internal] add envd-sshd from ghcr.io/tensorchord/envd-sshd-from-scratch:v1.3.4",
        "[internal] install horust",
        "[internal] create user group envd(g:1000)",
        "[internal] create user envd(u:1000)",
        "[internal] install ssh keys",
        "[internal] install oh-my-zsh",
        "[internal] setting prompt zsh config",
        "[internal] create file /etc/horust/services/sshd.toml",
        "[internal] create file /etc/horust/services/init_0.toml",
        "[internal] create file /etc/horust/services/daemon_0.toml",
        "[internal] create file /etc/horust/services/jupyter.toml",
        "install vscode plugin ms-python.python@linux-x64",
        "[internal] create work dir: /home/envd/proj",
    ] {
        assert!(n.contains(&want.to_string()), "{want} not in {n:?}");
    }
    let g = llb::load(&l.definition.to_bytes()).unwrap();
    let files: Vec<(String, String)> = g
        .vertices
        .iter()
        .filter_map(|v| match &v.op.op {
            Some(pb::op::Op::File(f)) => match &f.actions[0].action {
                Some(pb::file_action::Action::Mkfile(m)) => Some((
                    m.path.clone(),
                    String::from_utf8_lossy(&m.data).into_owned(),
                )),
                _ => None,
            },
            _ => None,
        })
        .collect();
    let file = |p: &str| {
        files
            .iter()
            .find(|(path, _)| path == p)
            .map(|(_, d)| d.clone())
            .unwrap_or_else(|| panic!("no mkfile {p}"))
    };
    // The daemon starts after the init scripts; an empty Jupyter token becomes ''.
    assert!(file("/etc/horust/services/daemon_0.toml").contains("start-after = [\"init_0\",]\n"));
    assert!(
        file("/etc/horust/services/jupyter.toml").contains("--NotebookApp.token '' --port 8888\n")
    );
    assert!(
        file("/etc/horust/services/init_0.toml")
            .contains("/bin/bash -c 'set -euo pipefail\necho a\necho b'")
    );
    // The key is the host's, with " envd" appended and one newline trimmed.
    assert_eq!(
        file("/var/envd/authorized_keys"),
        "ssh-ed25519 AAAAtest user@host envd"
    );
    assert_eq!(
        file("/home/envd/.gitconfig"),
        "\n[user]\n\temail = ada@example.com\n\tname = Ada\n[core]\n\teditor = vim\n\n"
    );
    assert!(g.to_json_lines().contains("local://cache-dir"));
    // Run steps run as envd.
    let users: Vec<String> = g
        .vertices
        .iter()
        .filter_map(|v| match &v.op.op {
            Some(pb::op::Op::Exec(e)) => e.meta.as_ref().map(|m| m.user.clone()),
            _ => None,
        })
        .collect();
    assert!(users.iter().any(|u| u == "envd"), "{users:?}");
    let img = &l.image;
    assert_eq!(img.entrypoint, Some(vec!["horust".to_string()]));
    assert_eq!(img.user.as_deref(), Some("envd"));
    assert_eq!(img.working_dir.as_deref(), Some("/home/envd/proj"));
    assert_eq!(img.exposed_ports, ["2222/tcp", "8000/tcp", "8888/tcp"]);
    for want in [
        "USER=envd",
        "SHELL=/usr/bin/zsh",
        "ENVD_WORKDIR=/home/envd/proj",
    ] {
        assert!(
            img.env.iter().any(|e| e == want),
            "{want} not in {:?}",
            img.env
        );
    }
    let general = &img.labels["ai.tensorchord.envd.graph.general"];
    assert!(general.contains(r#""Token":"''""#), "{general}");
    assert!(!img.labels["ai.tensorchord.envd.graph.runtime"].contains("ENVD_WORKDIR"));

    // uid 0: the envd user is mapped onto root and steps stay root.
    let o = LowerOptions {
        owner: (0, 0),
        ..opts()
    };
    let l = lower(&env, &BaseImage::default(), &o).unwrap();
    let n = names(&l);
    assert!(
        n.contains(&"[internal] set envd uid to 0 as root".to_string()),
        "{n:?}"
    );
    assert_eq!(l.image.user, None);
    assert!(l.image.env.iter().any(|e| e == "USER=root"));
}

#[test]
fn entrypoint_is_refused_in_dev_mode() {
    let env = Environment {
        dev: true,
        entrypoint: vec!["python3".into()],
        ..Environment::default()
    };
    assert!(lower(&env, &BaseImage::default(), &opts()).is_err());
}

#[test]
fn go_json_escapes_like_go() {
    assert_eq!(
        gojson::Json::string_list(&["a<b>&c"]).encode(),
        r#"["a\u003cb\u003e\u0026c"]"#
    );
    assert_eq!(
        lang::url_hostname("https://[::1]:3128/x").as_deref(),
        Some("::1")
    );
    assert_eq!(lang::url_hostname("not a url"), None);
}

fn all_args(l: &Lowered) -> Vec<Vec<String>> {
    let g = llb::load(&l.definition.to_bytes()).unwrap();
    g.vertices
        .iter()
        .filter_map(|v| match &v.op.op {
            Some(pb::op::Op::Exec(e)) => e.meta.as_ref().map(|m| m.args.clone()),
            _ => None,
        })
        .collect()
}

fn names(l: &Lowered) -> Vec<String> {
    let g = llb::load(&l.definition.to_bytes()).unwrap();
    g.vertices
        .iter()
        .filter_map(|v| v.metadata.description.get("llb.customname").cloned())
        .collect()
}

fn with_langs(langs: &[(crate::ir::LanguageName, Option<&str>)]) -> Environment {
    Environment {
        image: "ubuntu:22.04".into(),
        languages: langs
            .iter()
            .map(|(n, v)| crate::ir::Language {
                name: *n,
                version: v.map(str::to_string),
            })
            .collect(),
        ..Environment::default()
    }
}

#[test]
fn python_comes_from_micromamba_and_alternatives() {
    use crate::ir::LanguageName as L;
    let l = lower(
        &with_langs(&[(L::Python, Some("3.10"))]),
        &BaseImage::default(),
        &opts(),
    )
    .unwrap();
    let args = all_args(&l);
    assert!(args.contains(&vec![
        "bash".to_string(),
        "-c".into(),
        "/usr/local/bin/micromamba create -p /opt/conda/envs/envd -c defaults python=3.10".into()
    ]));
    assert!(
        args.iter()
            .any(|a| a[0] == "sh"
                && a[2].contains("update-alternatives --install /usr/bin/pip3 pip3"))
    );
    // The conda PATH is one element of envd's PATH list, and goes into the image.
    let path = l.image.env.iter().find(|e| e.starts_with("PATH=")).unwrap();
    assert!(path.ends_with(":/opt/conda/envs/envd/bin:/opt/conda/bin:/home/envd/.local/bin"));
    let bad = with_langs(&[(L::Python, Some("4.0"))]);
    assert!(lower(&bad, &BaseImage::default(), &opts()).is_err());
}

#[test]
fn r_keeps_envds_six_word_split() {
    use crate::ir::LanguageName as L;
    let mut env = with_langs(&[(L::R, None)]);
    env.r_packages = vec![vec!["ggplot2".into(), "dplyr".into()]];
    let l = lower(&env, &BaseImage::default(), &opts()).unwrap();
    let args = all_args(&l);
    let key = args.iter().find(|a| a[0] == "sh" && a.len() == 6).unwrap();
    assert_eq!(key[3], "[signed-by=/usr/share/keyrings/r-project.gpg]");
    assert!(args.contains(&vec![
        "R".to_string(),
        "-e".into(),
        "options(repos = \"https://cran.rstudio.com\"); install.packages(c(\"ggplot2\",\"dplyr\"), lib = \"/usr/local/lib/R/site-library\")".into()
    ]));
}

#[test]
fn conda_packages_name_lists_the_packages_twice_like_envd() {
    use crate::ir::LanguageName as L;
    let mut env = with_langs(&[(L::Python, None)]);
    env.conda = Some(crate::ir::CondaConfig {
        packages: vec!["numpy".into()],
        channels: vec!["conda-forge".into()],
        ..Default::default()
    });
    let l = lower(&env, &BaseImage::default(), &opts()).unwrap();
    let n = names(&l);
    assert!(
        n.contains(
            &"[internal] /opt/conda/bin/conda install -n envd -c conda-forge numpy numpy"
                .to_string()
        ),
        "{n:?}"
    );
    assert!(n.contains(&"copy conda from builder".to_string()));
    let args = all_args(&l);
    assert!(
        args.iter()
            .any(|a| a.len() == 3 && a[2].starts_with("set -euo pipefail && \\\nUNAME_M="))
    );
}

#[test]
fn several_languages_are_merged_for_buildkitd() {
    use crate::ir::LanguageName as L;
    let env = with_langs(&[(L::Rust, Some("1.80")), (L::Go, None), (L::NodeJs, None)]);
    let o = LowerOptions {
        target: Target::Buildkitd,
        ..opts()
    };
    let l = lower(&env, &BaseImage::default(), &o).unwrap();
    let n = names(&l);
    for want in [
        "[internal] build rust env",
        "[internal] build go env",
        "[internal] build nodejs env",
        "[internal] merge all the language environments",
        "[internal] download go 1.25.3",
        "[internal] prepare nodejs 25.1.0",
    ] {
        assert!(n.contains(&want.to_string()), "{want} not in {n:?}");
    }
    let path = l.image.env.iter().find(|e| e.starts_with("PATH=")).unwrap();
    assert!(
        path.ends_with(":/opt/rust/bin:/usr/local/go/bin:/opt/nodejs/bin"),
        "{path}"
    );
}

#[test]
fn requirements_are_inlined_when_safe() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("req.txt"), "# deps\nsix==1.16.0\nrich\n").unwrap();
    std::fs::write(dir.path().join("unsafe.txt"), "-e .\n").unwrap();
    let o = LowerOptions {
        context_dir: dir.path().to_path_buf(),
        ..opts()
    };
    let env = Environment {
        requirements_file: Some("req.txt".into()),
        ..Environment::default()
    };
    let l = lower(&env, &BaseImage::default(), &o).unwrap();
    assert!(all_args(&l).contains(&vec![
        "python".to_string(),
        "-m".into(),
        "pip".into(),
        "install".into(),
        "six==1.16.0".into(),
        "rich".into()
    ]));
    let env = Environment {
        requirements_file: Some("unsafe.txt".into()),
        ..Environment::default()
    };
    let l = lower(&env, &BaseImage::default(), &o).unwrap();
    assert!(names(&l).contains(&"[internal] pip install -r unsafe.txt".to_string()));
}

#[test]
fn http_sources_and_cuda_and_mounts() {
    let env = Environment {
        image: "ubuntu:22.04".into(),
        cuda: Some("11.8.0".into()),
        http: vec![crate::ir::HttpSource {
            url: "https://example.com/data.csv".into(),
            checksum: Some(format!("sha256:{}", "1".repeat(64))),
            filename: "data.csv".into(),
        }],
        mounts: vec![crate::ir::MountDir {
            host_path: "/data".into(),
            envd_path: "/home/envd/data".into(),
        }],
        ..Environment::default()
    };
    let l = lower(&env, &BaseImage::default(), &opts()).unwrap();
    let json = llb::load(&l.definition.to_bytes()).unwrap().to_json_lines();
    assert!(
        json.contains("docker-image://docker.io/nvidia/cuda:11.8.0-cudnn8-runtime-ubuntu22.04")
    );
    assert!(
        json.contains("\"identifier\":\"https://example.com/data.csv\""),
        "{json}"
    );
    assert!(json.contains("\"http.uid\":\"1000\""), "{json}");
    assert!(
        names(&l).contains(&"[internal] create dir for runtime.mount /home/envd/data".to_string())
    );
    assert_eq!(l.image.labels["ai.tensorchord.envd.gpu.cuda"], "11.8.0");
}

/// A relative `io.copy` target resolves against the graph's working directory at that point,
/// as envd's LLB client does: `/` here (no step before it set one), so `bpe` is `/bpe`.
#[test]
fn a_relative_copy_target_resolves_against_the_working_dir() {
    let mut env = example();
    env.copies = vec![Copy {
        source: "bpe".into(),
        target: "bpe".into(),
        image: None,
    }];
    let l = lower(&env, &python_base(), &opts()).unwrap();
    let dests: Vec<String> = chain(&l)
        .iter()
        .filter_map(|o| match &o.op {
            Some(pb::op::Op::File(f)) => f.actions.iter().find_map(|a| match &a.action {
                Some(pb::file_action::Action::Copy(c)) => Some(c.dest.clone()),
                _ => None,
            }),
            _ => None,
        })
        .collect();
    assert_eq!(dests, ["/bpe"]);
}
