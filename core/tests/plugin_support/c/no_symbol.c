/* A shared library that is not a Tidewater plugin: no tidewater_plugin_v1. */
int not_a_plugin(void) {
    return 42;
}
