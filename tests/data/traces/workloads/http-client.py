import http.client, random
random.seed(7)
for i in range(4000):
    c = http.client.HTTPConnection("127.0.0.1", 18099, timeout=5)
    gz = {"Accept-Encoding": "gzip"} if i % 2 else {}
    path = "/" if i % 50 == 0 else "/p%d.txt" % random.randint(1, 20)
    if i % 7 == 0: path = "/missing%d" % i
    c.request("GET", path, headers=gz); r = c.getresponse(); r.read(); c.close()
