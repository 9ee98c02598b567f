/* A plugin whose create always fails with its own message. */
#include <string.h>

#include "tidewater_plugin.h"

static TwStatus on_create(const TwHostApi *host, TwStr config, void **instance, TwErrorBuf *error) {
    const char *message = "cannot reach the vendor's gateway at 10.0.0.9";
    size_t len = strlen(message);
    (void)host;
    (void)config;
    (void)instance;
    if (len > error->cap) {
        len = error->cap;
    }
    memcpy(error->ptr, message, len);
    error->len = len;
    return TW_STATUS_ERROR;
}

static TwStatus nothing(void *instance) {
    (void)instance;
    return TW_STATUS_OK;
}

static TwStatus no_message(void *instance, TwStr topic, TwBytes payload) {
    (void)instance;
    (void)topic;
    (void)payload;
    return TW_STATUS_OK;
}

static void no_destroy(void *instance) {
    (void)instance;
}

static const TwPluginDescriptor DESCRIPTOR = {
    TW_ABI_VERSION, sizeof(TwPluginDescriptor), {"create-fails", 12}, {"0.0.1", 5},
    on_create, nothing, no_message, nothing, no_destroy,
};

const TwPluginDescriptor *tidewater_plugin_v1(void) {
    return &DESCRIPTOR;
}
