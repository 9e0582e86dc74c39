# One platform of a multi-platform build: every step's name starts with its platform, and a
# stage that runs on the build platform for another target shows the arrow to it.
FROM --platform=$BUILDPLATFORM busybox:latest AS tools
ARG TARGETPLATFORM
ARG TARGETARCH
RUN echo "building for $TARGETPLATFORM" > /target
WORKDIR /src
COPY . .

FROM busybox:latest
WORKDIR /app
COPY --from=tools /target /app/target
COPY --link hello.txt /app/
RUN cat /app/target
