//! The Dockerfile frontend against BuildKit v0.32.2's own (`dockerfile2llb`): for each of the
//! real Dockerfiles in `../shared/dockerfile-golden/` (data outside the repository: set
//! `ENVKIT_DOCKERFILE_GOLDEN` to its path where it lives elsewhere), the ops envkit makes must
//! have the digests the oracle's Definition has, and the files BuildKit rejects are rejected.
//! Every base image resolves to the one fixed image the oracle used.
//!
//! The frontend is being built up: `MATCHING` lists the vectors that already give identical
//! ops, and must keep doing so; the others are reported with what they lack
//! (`ENVKIT_DF_DEBUG=NNN` prints the ops of vector NNN that only one side has).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use envkit::dockerfile::convert::{self, ConvertError, ConvertOpt, ResolvedImage};
use envkit::platform::Platform;

/// Vectors whose Definitions already match op for op.
const MATCHING: &[&str] = &[
    "001", "002", "003", "004", "005", "007", "008", "011", "015", "018", "020", "024", "029",
    "030", "031", "032", "033", "035", "038", "042", "043", "006", "009", "010", "012", "013",
    "014", "017", "019", "022", "023", "025", "026", "027", "034", "037", "039", "040", "041",
    "044", "045", "046", "047", "048",
];

fn golden_dir() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("ENVKIT_DOCKERFILE_GOLDEN").map(PathBuf::from),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/dockerfile-golden")),
        Some(PathBuf::from("/work/shared/dockerfile-golden")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.join("INDEX.md").is_file())
}

/// The `oracle args` column of INDEX.md, by vector number.
fn oracle_args(index: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in index.lines() {
        let cols: Vec<&str> = line.split('|').map(str::trim).collect();
        if cols.len() > 7 && cols[1].len() == 3 && cols[1].chars().all(|c| c.is_ascii_digit()) {
            out.insert(cols[1].to_string(), cols[6].trim_matches('`').to_string());
        }
    }
    out
}

fn options(args: &str) -> (ConvertOpt, bool) {
    let mut opt = ConvertOpt {
        build_platform: Platform::linux_amd64(),
        context_unique: "dfcorpus".into(),
        // The oracle did not follow `# syntax=` lines either.
        ignore_syntax: true,
        ..Default::default()
    };
    let words: Vec<&str> = args.split_whitespace().collect();
    let mut i = 0;
    let mut ok = true;
    while i < words.len() {
        match words[i] {
            "--platform" if i + 1 < words.len() => {
                match Platform::parse(words[i + 1]) {
                    Ok(p) => opt.target_platform = Some(p),
                    Err(_) => ok = false,
                }
                i += 2;
            }
            "--multi-platform" => {
                opt.multi_platform = true;
                i += 1;
            }
            "--build-arg" if i + 1 < words.len() => {
                if let Some((k, v)) = words[i + 1].split_once('=') {
                    opt.build_args.insert(k.into(), v.into());
                }
                i += 2;
            }
            "—" => i += 1,
            _ => {
                ok = false;
                i += 1;
            }
        }
    }
    (opt, ok)
}

/// Converts with every base image resolved to the oracle's fixed image.
fn convert_all(
    text: &str,
    mut opt: ConvertOpt,
    base: &(String, Vec<u8>),
) -> Result<envkit::dockerfile::convert::Converted, ConvertError> {
    for _ in 0..8 {
        match convert::convert(text, &opt) {
            Err(ConvertError::Unresolved(refs)) => {
                for (r, p) in refs {
                    let name = r.split('@').next().unwrap_or(&r).to_string();
                    opt.images.insert(
                        (r, p),
                        ResolvedImage {
                            pinned: format!("{name}@{}", base.0),
                            config: base.1.clone(),
                        },
                    );
                }
            }
            other => return other,
        }
    }
    convert::convert(text, &opt)
}

/// The `*.Dockerfile`s of a directory, in name order.
fn dockerfiles(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "Dockerfile"))
        .collect();
    files.sort();
    files
}

/// The ops only one of two Definitions has, as JSON, for finding what differs.
fn print_differences(
    name: &str,
    ours: &envkit::llb::LoadedGraph,
    theirs: &envkit::llb::LoadedGraph,
) {
    for (who, g, other) in [("ours", ours, theirs), ("theirs", theirs, ours)] {
        let others: Vec<String> = other
            .vertices
            .iter()
            .map(|v| v.digest.to_string())
            .collect();
        for v in &g.vertices {
            if !others.contains(&v.digest.to_string()) {
                eprintln!("{name} {who} only: {}", envkit::llb::op_json(&v.op));
            }
        }
    }
}

/// Whether two graphs give their ops the same names (`llb.customname`, metadata outside the
/// digests); the differences are printed.
fn same_names(
    label: &str,
    want: &envkit::llb::LoadedGraph,
    got: &envkit::llb::LoadedGraph,
) -> bool {
    let names = |g: &envkit::llb::LoadedGraph| -> Vec<(String, String)> {
        let mut n: Vec<(String, String)> = g
            .vertices
            .iter()
            .map(|v| {
                let name = v
                    .metadata
                    .description
                    .get("llb.customname")
                    .cloned()
                    .unwrap_or_default();
                (v.digest.to_string(), name)
            })
            .collect();
        n.sort();
        n
    };
    let (w, g) = (names(want), names(got));
    for (w, g) in w.iter().zip(g.iter()).filter(|(w, g)| w != g) {
        eprintln!("{label}: theirs {w:?}\n{label}: ours   {g:?}");
    }
    w == g
}

#[test]
fn dockerfile_golden_vectors() {
    let Some(dir) = golden_dir() else {
        eprintln!(
            "NOT RUN: dockerfile_golden_vectors — ../shared/dockerfile-golden is not here \
             (set ENVKIT_DOCKERFILE_GOLDEN)"
        );
        return;
    };
    let oracle = dir.join("oracle");
    let base_json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(oracle.join("base-image.json")).expect("base-image.json"),
    )
    .expect("json");
    let base = (
        base_json["manifest_digest"]
            .as_str()
            .expect("digest")
            .to_string(),
        base_json["config"]
            .as_str()
            .expect("config")
            .as_bytes()
            .to_vec(),
    );
    let args = oracle_args(&std::fs::read_to_string(dir.join("INDEX.md")).expect("INDEX.md"));
    let files = dockerfiles(&dir);
    let mut report = Vec::new();
    let mut matched = Vec::new();
    let mut failures = Vec::new();
    for f in &files {
        let file_name = f
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let num = file_name[..3].to_string();
        let stem = file_name.strip_suffix(".Dockerfile").unwrap_or(&file_name);
        let text = std::fs::read_to_string(f).expect("dockerfile");
        let (opt, args_ok) = options(args.get(&num).map(String::as_str).unwrap_or(""));
        assert!(
            args_ok,
            "{num}: oracle args not understood: {:?}",
            args.get(&num)
        );
        let got = convert_all(&text, opt, &base);
        let error_file = oracle.join(format!("{stem}.error"));
        if error_file.is_file() {
            let want = std::fs::read_to_string(&error_file).expect("error");
            match got {
                Err(e) => {
                    report.push(format!("{num}: rejected ({e}); BuildKit: {}", want.trim()));
                    matched.push(num.clone());
                }
                Ok(_) => failures.push(format!(
                    "{num}: accepted a file BuildKit rejects ({})",
                    want.trim()
                )),
            }
            continue;
        }
        let want: Vec<String> = std::fs::read_to_string(oracle.join(format!("{stem}.digests")))
            .expect("digests")
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
            .collect();
        match got {
            Err(e) => report.push(format!("{num}: not converted: {e}")),
            Ok(c) => {
                let have: Vec<String> = c
                    .definition
                    .def
                    .iter()
                    .map(|b| {
                        use sha2::Digest as _;
                        format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
                    })
                    .collect();
                let want_set: HashMap<&String, ()> = want.iter().map(|d| (d, ())).collect();
                let common = have.iter().filter(|d| want_set.contains_key(d)).count();
                if std::env::var("ENVKIT_DF_DEBUG").is_ok_and(|v| v == num) {
                    // The ops each side has that the other lacks, as JSON.
                    let ours = envkit::llb::load(&c.definition.to_bytes()).expect("ours");
                    let theirs = envkit::llb::load(
                        &std::fs::read(oracle.join(format!("{stem}.pb"))).expect("pb"),
                    )
                    .expect("theirs");
                    print_differences(&num, &ours, &theirs);
                }
                let named = || {
                    let ours = envkit::llb::load(&c.definition.to_bytes()).expect("ours");
                    let theirs = envkit::llb::load(
                        &std::fs::read(oracle.join(format!("{stem}.pb"))).expect("pb"),
                    )
                    .expect("theirs");
                    same_names(&num, &theirs, &ours)
                };
                if have.len() == want.len() && common == want.len() && !named() {
                    report.push(format!("{num}: identical ops, other step names"));
                } else if have.len() == want.len() && common == want.len() {
                    matched.push(num.clone());
                    report.push(format!("{num}: identical ({} ops)", want.len()));
                } else {
                    report.push(format!(
                        "{num}: {common} of {} ops identical ({} made)",
                        want.len(),
                        have.len()
                    ));
                }
            }
        }
    }
    eprintln!("{}", report.join("\n"));
    for m in MATCHING {
        if !matched.iter().any(|x| x == m) {
            failures.push(format!("{m}: no longer identical"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Envkit's own vectors (`tests/golden/dockerfile/`): Dockerfiles for the instructions and
/// flags the 44 real ones do not use, with the Definitions BuildKit v0.32.2's dockerfile2llb
/// made of them in a session (see the README there). Every op must be identical.
#[test]
fn own_dockerfile_vectors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/dockerfile");
    let base = (
        "sha256:02a06bd82a3b0c73fa36d8723ebd89e68edb1875f8104d76cfdd311c86722654".to_string(),
        std::fs::read(dir.join("base-config.json")).expect("base config"),
    );
    let args: BTreeMap<String, String> = std::fs::read_to_string(dir.join("args.txt"))
        .expect("args")
        .lines()
        .filter_map(|l| {
            l.split_once(' ')
                .map(|(n, a)| (n.to_string(), a.to_string()))
        })
        .collect();
    let files = dockerfiles(&dir);
    assert!(!files.is_empty());
    let mut failures = Vec::new();
    for f in &files {
        let name = f
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let num = &name[..3];
        let (mut opt, ok) = options(args.get(num).map(String::as_str).unwrap_or(""));
        assert!(ok, "{num}: args");
        opt.ignore_syntax = true;
        let text = std::fs::read_to_string(f).expect("dockerfile");
        let want =
            envkit::llb::load(&std::fs::read(f.with_extension("pb")).expect("pb")).expect("load");
        let got = match convert_all(&text, opt, &base) {
            Ok(c) => envkit::llb::load(&c.definition.to_bytes()).expect("ours"),
            Err(e) => {
                failures.push(format!("{name}: not converted: {e}"));
                continue;
            }
        };
        let digests = |g: &envkit::llb::LoadedGraph| -> Vec<String> {
            let mut d: Vec<String> = g.vertices.iter().map(|v| v.digest.to_string()).collect();
            d.sort();
            d
        };
        if digests(&want) != digests(&got) {
            print_differences(&name, &got, &want);
            failures.push(format!("{name}: ops differ"));
        }
        // The steps' names (metadata, outside the digests) as well.
        if !same_names(&name, &want, &got) {
            failures.push(format!("{name}: step names differ"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
