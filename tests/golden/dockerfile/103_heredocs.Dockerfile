FROM alpine:3.20
ARG NAME=world
RUN <<EOF
#!/bin/sh
echo "hello $NAME"
EOF
RUN <<EOF
echo one
echo two
EOF
RUN <<A cat /dev/stdin > /a && cat <<B > /b
first
A
second
B
COPY <<EOF /greeting
hello ${NAME}
EOF
COPY <<-"EOF" /raw
	literal $NAME
	EOF
RUN python3 <<EOF
print("x")
EOF
