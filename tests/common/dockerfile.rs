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
