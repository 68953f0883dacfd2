"""Management: RabbitMQ 3.10's HTTP API on `management_port` and Prometheus metrics on
`prometheus_port`, served on trio inside the node process (Hypercorn's trio worker
running Starlette applications).

- `errors`: the API's error answers as values (`ApiError`) and their JSON;
- `access`: RabbitMQ's user tags and who may see or change what (pure);
- `listing`: pagination, filtering, sorting and column selection of list answers (pure);
- `rates`: message rates from counters sampled by the node (`broker.queue_rates`; pure, time passed in);
- `shapes`: RabbitMQ's JSON objects built from `NodeView` rows (pure);
- `api`: the handlers (thin: parse, check, call, shape);
- `routes`: the route table and the ASGI application (authentication, 405, errors as JSON);
- `prometheus`: the metrics text (pure rendering) and its application;
- `server`: binding the listeners, Hypercorn.

Every handler reads through `broker.node_view.NodeView` and changes metadata only
through the node's `propose_metadata`, as AMQP clients and leveretctl do.
"""
