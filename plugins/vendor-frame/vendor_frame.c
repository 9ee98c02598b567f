/*
 * vendor-frame: a Tidewater plugin in C. It decodes a vendor's 8-byte binary
 * sensor frame, received on vendor/<device>/raw, into JSON published on
 * vendor/<device>/decoded. See README.md for the frame layout.
 *
 * Build: cc -shared -fPIC -std=c11 -I ../api/include vendor_frame.c -o libvendor_frame.so
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tidewater_plugin.h"

#define FRAME_LEN 8
#define FRAME_MAGIC 0xA5
#define FRAME_VERSION 0x01
#define MAX_TOPIC 256

typedef struct Instance {
    const TwHostApi *host; /* OWNERSHIP: host's, valid until destroy() returns */
    unsigned long decoded;
} Instance;

static TwStr str(const char *text) {
    TwStr s = {text, strlen(text)};
    return s;
}

static void host_log(const Instance *self, TwLogLevel level, const char *message) {
    self->host->log(self->host->ctx, level, str(message));
}

static void set_error(TwErrorBuf *error, const char *message) {
    size_t len = strlen(message);
    if (error == NULL || error->ptr == NULL) {
        return;
    }
    if (len > error->cap) {
        len = error->cap;
    }
    memcpy(error->ptr, message, len);
    error->len = len;
}

/* Accepts an empty configuration only: "{}" with optional white space. */
static int config_is_empty(TwStr config) {
    size_t i;
    int braces = 0;
    for (i = 0; i < config.len; i++) {
        char c = config.ptr[i];
        if (c == '{' || c == '}') {
            braces++;
        } else if (c != ' ' && c != '\n' && c != '\t' && c != '\r') {
            return 0;
        }
    }
    return braces == 2 || config.len == 0;
}

static TwStatus on_create(const TwHostApi *host, TwStr config_json, void **instance,
                          TwErrorBuf *error) {
    Instance *self;
    TwStatus status;
    if (host == NULL || host->abi_version != TW_ABI_VERSION) {
        set_error(error, "vendor-frame needs a host of ABI version 1");
        return TW_STATUS_ERROR;
    }
    if (!config_is_empty(config_json)) {
        set_error(error, "vendor-frame takes no configuration: leave [plugins.config] out");
        return TW_STATUS_INVALID_ARGUMENT;
    }
    self = calloc(1, sizeof *self);
    if (self == NULL) {
        set_error(error, "out of memory");
        return TW_STATUS_ERROR;
    }
    self->host = host;
    status = host->subscribe(host->ctx, str("vendor/+/raw"));
    if (status != TW_STATUS_OK) {
        set_error(error, "cannot subscribe to vendor/+/raw");
        free(self);
        return status;
    }
    *instance = self;
    return TW_STATUS_OK;
}

static TwStatus on_start(void *instance) {
    host_log(instance, TW_LOG_INFO, "Decoding vendor frames from vendor/+/raw.");
    return TW_STATUS_OK;
}

/* vendor/<device>/raw -> vendor/<device>/decoded; 0 if the topic is not one. */
static int decoded_topic(TwStr topic, char *out, size_t cap) {
    const char *prefix = "vendor/";
    const char *suffix = "/raw";
    size_t plen = strlen(prefix), slen = strlen(suffix), device;
    if (topic.len <= plen + slen || memcmp(topic.ptr, prefix, plen) != 0 ||
        memcmp(topic.ptr + topic.len - slen, suffix, slen) != 0) {
        return 0;
    }
    device = topic.len - plen - slen;
    return snprintf(out, cap, "vendor/%.*s/decoded", (int)device, topic.ptr + plen) < (int)cap;
}

static TwStatus on_message(void *instance, TwStr topic, TwBytes payload) {
    Instance *self = instance;
    const uint8_t *f = payload.ptr;
    char out_topic[MAX_TOPIC], json[128], why[160];
    uint8_t checksum = 0;
    int16_t centi_celsius;
    uint16_t centi_percent;
    int i, len;

    if (!decoded_topic(topic, out_topic, sizeof out_topic)) {
        return TW_STATUS_INVALID_ARGUMENT;
    }
    if (payload.len != FRAME_LEN || f[0] != FRAME_MAGIC || f[1] != FRAME_VERSION) {
        snprintf(why, sizeof why, "Not a version-1 vendor frame on %.*s (%zu bytes).",
                 (int)topic.len, topic.ptr, payload.len);
        host_log(self, TW_LOG_ERROR, why);
        return TW_STATUS_ERROR;
    }
    for (i = 0; i < FRAME_LEN - 1; i++) {
        checksum ^= f[i];
    }
    if (checksum != f[7]) {
        snprintf(why, sizeof why, "Bad checksum on %.*s: 0x%02x, expected 0x%02x.",
                 (int)topic.len, topic.ptr, f[7], checksum);
        host_log(self, TW_LOG_ERROR, why);
        return TW_STATUS_ERROR;
    }
    centi_celsius = (int16_t)(uint16_t)((f[2] << 8) | f[3]);
    centi_percent = (uint16_t)((f[4] << 8) | f[5]);
    len = snprintf(json, sizeof json, "{\"temperature\":%.2f,\"humidity\":%.2f,\"battery\":%u}",
                   centi_celsius / 100.0, centi_percent / 100.0, (unsigned)f[6]);
    {
        TwBytes body = {(const uint8_t *)json, (size_t)len};
        TwStatus status = self->host->publish(self->host->ctx, str(out_topic), body, 0, 0);
        if (status != TW_STATUS_OK) {
            return status; /* BUSY: this frame is dropped; the next one follows */
        }
    }
    self->decoded++;
    return TW_STATUS_OK;
}

static TwStatus on_stop(void *instance) {
    char line[96];
    snprintf(line, sizeof line, "Decoded %lu frames.", ((Instance *)instance)->decoded);
    host_log(instance, TW_LOG_INFO, line);
    return TW_STATUS_OK;
}

static void on_destroy(void *instance) {
    free(instance);
}

static const TwPluginDescriptor DESCRIPTOR = {
    TW_ABI_VERSION,
    sizeof(TwPluginDescriptor),
    {"vendor-frame", 12},
    {"0.1.0", 5},
    on_create,
    on_start,
    on_message,
    on_stop,
    on_destroy,
};

const TwPluginDescriptor *tidewater_plugin_v1(void) {
    return &DESCRIPTOR;
}
