# Nothing to do: the `igrt` pytest plugin (module sim.testing) is registered by the
# igrt package's pytest11 entry point once igrt is installed (make setup), and gives
# the fixtures igrt_room and igrt_room_factory. Do not add `pytest_plugins` here:
# the plugin would then be registered twice.
