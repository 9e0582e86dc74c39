FROM alpine:3.20
RUN --network=none echo offline
RUN --network=host echo host
RUN --security=insecure echo insecure
RUN --security=sandbox --network=default echo default
RUN --mount=type=tmpfs,target=/t,size=64m ls /t
RUN --mount=type=cache,id=apk,target=/var/cache/apk,sharing=locked,uid=100,gid=101,mode=0700 apk add curl
RUN --mount=type=cache,target=cache,sharing=private true
