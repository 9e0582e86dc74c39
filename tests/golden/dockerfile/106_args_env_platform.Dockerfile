ARG BASE=alpine:3.20
FROM --platform=$BUILDPLATFORM $BASE AS build
ARG TARGETARCH
ARG TARGETPLATFORM
ARG VERSION
ENV A=1 B="$A two" C=${VERSION:-none}
ENV OLD form value
RUN echo "$TARGETARCH $TARGETPLATFORM $B $C $OLD" > /info
FROM $BASE AS base
ONBUILD RUN echo triggered
ONBUILD COPY trigger.txt /trigger.txt
FROM base
ARG VERSION
COPY --from=build /info /info
RUN echo ${VERSION}
EXPOSE 80/udp 443
HEALTHCHECK --interval=30s --timeout=3s --retries=2 CMD wget -q -O- localhost
STOPSIGNAL SIGTERM
ENTRYPOINT echo entry
