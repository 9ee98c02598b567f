/* A plugin that subscribes while running: it starts on late/control, adds
 * the filter in any "sub <filter>" command it receives there, and echoes
 * every message it gets to late/echo as "<topic> <payload>". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tidewater_plugin.h"

static TwStr str(const char *text) {
    TwStr s = {text, strlen(text)};
    return s;
}

static TwStatus on_create(const TwHostApi *host, TwStr config, void **instance, TwErrorBuf *error) {
    (void)config;
    (void)error;
    *instance = (void *)host; /* the host table is all this plugin needs */
    return host->subscribe(host->ctx, str("late/control"));
}

static TwStatus nothing(void *instance) {
    (void)instance;
    return TW_STATUS_OK;
}

static TwStatus on_message(void *instance, TwStr topic, TwBytes payload) {
    const TwHostApi *host = instance;
    char echo[512];
    int len = snprintf(echo, sizeof echo, "%.*s %.*s", (int)topic.len, topic.ptr,
                       (int)payload.len, (const char *)payload.ptr);
    TwBytes body = {(const uint8_t *)echo, (size_t)len};
    TwStatus status;
    if (topic.len == 12 && memcmp(topic.ptr, "late/control", 12) == 0 && payload.len > 4 &&
        memcmp(payload.ptr, "sub ", 4) == 0) {
        TwStr filter = {(const char *)payload.ptr + 4, payload.len - 4};
        status = host->subscribe(host->ctx, filter);
        if (status != TW_STATUS_OK) {
            return status;
        }
    }
    /* A full ingress queue would drop an echo: retry briefly, the test
     * counts every one. */
    do {
        status = host->publish(host->ctx, str("late/echo"), body, 0, 0);
    } while (status == TW_STATUS_BUSY);
    return status;
}

static void no_destroy(void *instance) {
    (void)instance;
}

static const TwPluginDescriptor DESCRIPTOR = {
    TW_ABI_VERSION, sizeof(TwPluginDescriptor), {"late-subscriber", 15}, {"0.0.1", 5},
    on_create, nothing, on_message, nothing, no_destroy,
};

const TwPluginDescriptor *tidewater_plugin_v1(void) {
    return &DESCRIPTOR;
}
