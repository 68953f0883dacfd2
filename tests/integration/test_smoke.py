import pika
def test_node_serves_pika(node):
    c = pika.BlockingConnection(pika.URLParameters(node.url))
    ch = c.channel()
    ch.queue_declare("smoke")
    ch.basic_publish("", "smoke", b"x")
    assert ch.basic_get("smoke", auto_ack=True)[2] == b"x"
    c.close()
