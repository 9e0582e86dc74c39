FROM alpine:3.20 AS src
WORKDIR /work/sub
RUN touch a b
FROM alpine:3.20
WORKDIR app
COPY --chmod=u+x,g-w run.sh .
COPY --chown=1:2 --chmod=0640 conf/ /etc/app/
COPY --exclude=*.md --exclude=tests docs /docs
COPY --parents src/./pkg/*.go /gopath/
COPY --parents a/b/c.txt ./
COPY --link --chown=app:app static /srv/static
COPY --link --from=src /work/sub/ /data/
COPY --from=busybox:1.36 /bin/busybox /bin/bb
ADD --chown=3 archive.tar.gz /opt/
ADD --unpack=false archive.tar.gz /keep/
USER app
WORKDIR rel
