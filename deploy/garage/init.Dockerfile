# The official Garage image is FROM scratch (just /garage), so it cannot run a setup script. This
# image adds the same static binary to busybox for the one-shot garage-init container.
ARG GARAGE_IMAGE=dxflrs/garage:v2.1.0
FROM ${GARAGE_IMAGE} AS garage

FROM busybox:1.37
COPY --from=garage /garage /usr/local/bin/garage
COPY init.sh /init.sh
ENTRYPOINT ["/bin/sh", "/init.sh"]
