//! The Dockerfile tests' build context (`tests/dockerfile.rs`, and the comparison with
//! buildkitd's own Dockerfile frontend in `tests/buildkit.rs`).

use super::TestEnv;

/// Two stages the target needs (one with a cache mount), one it does not, a build
/// argument, a here-document and the config instructions.
pub const DOCKERFILE: &str = r#"FROM busybox:latest AS build
WORKDIR /src
COPY hello.txt .
RUN --mount=type=cache,target=/cache echo built > /src/out && cat hello.txt >> /src/out && echo x > /cache/x

FROM busybox:latest AS unused
RUN echo this stage is not needed && false

FROM busybox:latest
ARG GREETING=hi
ENV G=$GREETING
COPY --from=build /src/out /out
COPY other.txt /other.txt
RUN <<EOF
echo "$G" > /greeting
EOF
LABEL org.example.k=v
EXPOSE 8080
CMD ["cat", "/out"]
"#;

/// The context: the Dockerfile, a file it copies, one `.dockerignore` leaves out.
pub fn context(env: &TestEnv) -> std::path::PathBuf {
    let ctx = env.dir.join("ctx");
    std::fs::create_dir_all(&ctx).expect("mkdir");
    std::fs::write(ctx.join("Dockerfile"), DOCKERFILE).expect("Dockerfile");
    std::fs::write(ctx.join("hello.txt"), "hello\n").expect("hello");
    std::fs::write(ctx.join("other.txt"), "other\n").expect("other");
    std::fs::write(ctx.join("ignored.txt"), "no\n").expect("ignored");
    std::fs::write(ctx.join(".dockerignore"), "ignored.txt\n").expect("dockerignore");
    env.chown(&ctx);
    ctx
}

/// Language-shaped multi-stage Dockerfiles that build offline from the test registry: each
/// one's name, its context (made under `env.dir`), and what its image prints when run.
///
/// - `python`: a package built with pip (setuptools, no index) into a directory in the
///   first stage; the runtime stage copies only that directory over the same base.
/// - `static`: a Go-style build, a static program made in the first stage copied alone into
///   `scratch`, with an entrypoint and a default command.
/// - `node`: a Node-style build, Debian's nodejs (from the apt mirror, apt's caches in cache
///   mounts) running a build script whose output alone goes into a small runtime image.
pub fn language_contexts(env: &TestEnv) -> Vec<(&'static str, std::path::PathBuf, &'static str)> {
    let mut out = Vec::new();
    let py = env.dir.join("lang-python");
    std::fs::create_dir_all(py.join("greet")).expect("mkdir");
    std::fs::write(
        py.join("Dockerfile"),
        "FROM python:3.11-slim AS build\n\
         ENV PIP_NO_COMPILE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1\n\
         WORKDIR /src\n\
         COPY pyproject.toml ./\n\
         COPY greet/ greet/\n\
         RUN pip install --no-index --no-build-isolation --no-compile --no-deps --target /app .\n\
         \n\
         FROM python:3.11-slim\n\
         ENV PYTHONPATH=/app PYTHONDONTWRITEBYTECODE=1\n\
         COPY --from=build /app /app\n\
         CMD [\"python\", \"-m\", \"greet\"]\n",
    )
    .expect("Dockerfile");
    std::fs::write(
        py.join("pyproject.toml"),
        "[build-system]\nrequires = [\"setuptools\"]\nbuild-backend = \"setuptools.build_meta\"\n\n\
         [project]\nname = \"greet\"\nversion = \"0.1\"\n\n\
         [tool.setuptools]\npackages = [\"greet\"]\n",
    )
    .expect("pyproject");
    std::fs::write(
        py.join("greet/__init__.py"),
        "WORD = \"hello from greet\"\n",
    )
    .expect("init");
    std::fs::write(
        py.join("greet/__main__.py"),
        "from greet import WORD\nprint(WORD)\n",
    )
    .expect("main");
    env.chown(&py);
    out.push(("python", py, "hello from greet\n"));

    let st = env.dir.join("lang-static");
    std::fs::create_dir_all(&st).expect("mkdir");
    std::fs::write(
        st.join("Dockerfile"),
        "FROM busybox:latest AS build\n\
         WORKDIR /out\n\
         COPY VERSION .\n\
         RUN cp /bin/busybox /out/busybox && chmod 0755 /out/busybox\n\
         \n\
         FROM scratch\n\
         COPY --from=build /out/busybox /usr/local/bin/busybox\n\
         COPY --from=build /out/VERSION /VERSION\n\
         ENTRYPOINT [\"/usr/local/bin/busybox\"]\n\
         CMD [\"cat\", \"/VERSION\"]\n",
    )
    .expect("Dockerfile");
    std::fs::write(st.join("VERSION"), "static 1.0\n").expect("VERSION");
    env.chown(&st);
    out.push(("static", st, "static 1.0\n"));

    let node = env.dir.join("lang-node");
    std::fs::create_dir_all(node.join("src")).expect("mkdir");
    std::fs::write(
        node.join("Dockerfile"),
        "FROM debian:bookworm AS build\n\
         RUN --mount=type=cache,target=/var/cache/apt,sharing=locked \\\n\
         \x20   --mount=type=cache,target=/var/lib/apt,sharing=locked \\\n\
         \x20   rm -f /etc/apt/apt.conf.d/docker-clean && apt-get update \\\n\
         \x20   && apt-get install -y --no-install-recommends nodejs\n\
         WORKDIR /site\n\
         COPY package.json build.js ./\n\
         COPY src/ src/\n\
         RUN node build.js\n\
         \n\
         FROM busybox:latest\n\
         COPY --from=build /site/dist /www\n\
         CMD [\"cat\", \"/www/index.html\"]\n",
    )
    .expect("Dockerfile");
    std::fs::write(
        node.join("package.json"),
        "{\"name\": \"site\", \"version\": \"1.0.0\"}\n",
    )
    .expect("package.json");
    std::fs::write(
        node.join("build.js"),
        "const fs = require('fs');\n\
         const pkg = require('./package.json');\n\
         const body = fs.readFileSync('src/body.txt', 'utf8').trim();\n\
         fs.mkdirSync('dist', { recursive: true });\n\
         fs.writeFileSync('dist/index.html', `<h1>${pkg.name} ${pkg.version}: ${body}</h1>\\n`);\n",
    )
    .expect("build.js");
    std::fs::write(node.join("src/body.txt"), "built by node\n").expect("body");
    env.chown(&node);
    out.push(("node", node, "<h1>site 1.0.0: built by node</h1>\n"));
    out
}
