"""A real Mosquitto for tests, configured like production: now `sim.broker`.

The simulated room (igrt-sim) runs the same broker, so the simulator owns it;
this module keeps the tests' import path and public names.

    from support.mosquitto import running_mosquitto

    with running_mosquitto(tmp_path) as broker:
        host, port, creds = broker          # creds: {"igrtd": pw, "console1": pw, ...}
        broker.restart()                    # same port, e.g. for reconnect tests
"""

from sim.broker import (
    DEFAULT_USERS,
    PROJECT_ACL,
    PROJECT_CONF,
    REPO,
    Mosquitto,
    free_port,
    mosquitto_binary,
    running_mosquitto,
)

__all__ = ["DEFAULT_USERS", "PROJECT_ACL", "PROJECT_CONF", "REPO", "Mosquitto", "free_port",
           "mosquitto_binary", "running_mosquitto"]
