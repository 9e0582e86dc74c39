FROM alpine:3.20
ADD https://example.com/files/tool.tar.gz /tmp/
ADD --checksum=sha256:24454f830cdb571e2c4ad15481119c43b3cafd48dd869a9b2945d1036d1dc68d https://example.com/a.bin /a.bin
ADD https://example.com/ /root/
ADD https://github.com/moby/buildkit.git?ref=v0.32.2&subdir=docs /bk-docs
ADD --keep-git-dir https://github.com/moby/buildkit.git#v0.32.2:frontend /bk-frontend
ADD git@github.com:moby/buildkit.git#main /bk-ssh
