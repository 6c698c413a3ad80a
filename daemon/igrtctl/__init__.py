"""igrtctl: the command-line client of igrtd (entry point `daemon.igrtctl.main:main`).

Offline tools that need no daemon (plan, register, register2d, register4d,
reg show, audit), the room commands of the command registry over the local
control socket or over MQTT (the same subcommands on both, built from
daemon/commands.py), and console key and user administration (keygen, users).
Every subcommand ends with one of the exit codes of `exits.ExitCode`; errors
are one line on stderr, never a traceback.
"""
