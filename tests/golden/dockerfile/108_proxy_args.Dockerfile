# Proxy build arguments: every RUN gets them as its proxy_env (outside the cache key), declared
# or not; a declared one is in the step's environment as well.
FROM busybox:latest
RUN wget -q -O- http://example.invalid/ || true
ARG HTTP_PROXY
RUN echo "$HTTP_PROXY"
