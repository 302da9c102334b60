// Runs calls of the official Node server SDK (`pusher` from npm) against ipe, for the REST tests.
//
//   node node_sdk.js CONFIG CALL [CALL ...]
//
// CONFIG is the JSON options object of `new Pusher(...)` (appId, key, secret, host, port, ...).
// Each CALL is a JSON array: a method name of the Pusher instance, then its arguments, e.g.
// '["trigger", "orders", "order-updated", {"id": 7}, {"info": "subscription_count"}]' or
// '["get", {"path": "/channels", "params": {"filter_by_prefix": "presence-"}}]'.
// The calls run one after the other; stdout gets one JSON array with a result per call:
//   {"status": 200, "body": <parsed JSON>}              a request the server answered with 2xx
//   {"error": "...", "status": 400, "body": "<text>"}   a RequestError (HTTP status >= 400)
//   {"error": "..."}                                     the SDK threw before sending
//   {"value": ...}                                       a method without a request (authorizeChannel)
// Responses are parsed as JSON because callers of the SDK do that; a non-JSON 2xx body is an
// error here ("bodyText" then holds it).
"use strict"

const Pusher = require("pusher")

async function run(pusher, [method, ...args]) {
  let value
  try {
    value = pusher[method](...args)
    if (!(value instanceof Promise)) {
      return { value }
    }
    const response = await value
    const text = await response.text()
    try {
      return { status: response.status, body: JSON.parse(text) }
    } catch (err) {
      return { status: response.status, error: "body is not JSON", bodyText: text }
    }
  } catch (err) {
    const result = { error: String(err.message || err) }
    if (err.status !== undefined) {
      result.status = err.status
      result.body = err.body
    }
    return result
  }
}

async function main() {
  const [configJson, ...calls] = process.argv.slice(2)
  const pusher = new Pusher(JSON.parse(configJson))
  const results = []
  for (const call of calls) {
    results.push(await run(pusher, JSON.parse(call)))
  }
  process.stdout.write(JSON.stringify(results) + "\n")
}

main().catch((err) => {
  process.stderr.write(String(err.stack || err) + "\n")
  process.exit(1)
})
