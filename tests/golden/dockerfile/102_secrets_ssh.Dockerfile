FROM alpine:3.20
RUN --mount=type=secret,id=tok,env=TOKEN echo "$TOKEN"
RUN --mount=type=secret,id=aws,target=/root/.aws/credentials,uid=1000,mode=0440,required cat /root/.aws/credentials
RUN --mount=type=secret,source=npmrc cat /run/secrets/npmrc
RUN --mount=type=secret,target=/etc/key true
RUN --mount=type=ssh ssh-add -l
RUN --mount=type=ssh,id=github,target=/ssh.sock,uid=2,required ls /ssh.sock
