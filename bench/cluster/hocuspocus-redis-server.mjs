// One Hocuspocus v4 node with @hocuspocus/extension-redis, for bench/cluster (the anchor of
// issue 21's bench: several Hocuspocus processes sharing documents through Redis pub/sub).
// In memory like ../shared/bench/servers/hocuspocus-server.mjs (no storage extension): the nodes
// relay updates and awareness to each other through Redis, nothing is persisted.
//
// Usage: node hocuspocus-redis-server.mjs --port 14101 [--host 127.0.0.1] --redis-port 6379
//          [--redis-host 127.0.0.1] [--identifier node-a]
// --port 0: a free port; --redis-port 0: no Redis extension (one node on its own). Prints
// "... listening on http://HOST:PORT ..." once it accepts connections (bench/benchserver.py waits for it).
import { Server } from '@hocuspocus/server'
import { Redis } from '@hocuspocus/extension-redis'

const args = process.argv.slice(2)
const opt = (name, def) => {
  const i = args.indexOf('--' + name)
  return i >= 0 ? args[i + 1] : def
}
const port = Number(opt('port', 14101))
const host = opt('host', '127.0.0.1')
const redisPort = Number(opt('redis-port', 6379))
const redisHost = opt('redis-host', '127.0.0.1')
const identifier = opt('identifier', `node-${port}`)

const server = new Server({
  port,
  address: host,
  quiet: true,
  extensions: redisPort ? [new Redis({ host: redisHost, port: redisPort, identifier, prefix: 'hocuspocus-bench' })] : []
  // no onAuthenticate hook: every token is accepted
})
await server.listen()
const bound = server.httpServer.address().port
console.log(`hocuspocus listening on http://${host}:${bound} (WebSocket; pid ${process.pid}, ` +
  (redisPort ? `redis ${redisHost}:${redisPort}, id ${identifier})` : 'no Redis)'))

const stop = async () => {
  try { await server.destroy() } catch {}
  process.exit(0)
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
