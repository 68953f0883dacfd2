"""The AMQP 0-9-1 front end's pure core: `spec` (constants, method records), `codec`
(bytes ⇄ frames), and the connection/channel state machines. Nothing here does I/O."""
