// Server-sent events read from a fetch() body: EventSource cannot POST nor
// send an Authorization header. Parsing follows the HTML standard's event
// stream format: lines end in LF, CRLF or CR; `event:` names the event,
// `data:` lines are joined with LF, a blank line dispatches, and lines that
// start with `:` (the console's keep-alive comments) are ignored.

/**
 * Yields `{event, data}` for each event of the stream `body`.
 * `onActivity` is called for every chunk read, comments included, so that a
 * caller can keep an idle deadline.
 */
export async function* events(body, onActivity = () => {}) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = "";
  let data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      onActivity();
      buffer += value;
      let end;
      while ((end = lineEnd(buffer)) !== null) {
        const line = buffer.slice(0, end.at);
        buffer = buffer.slice(end.at + end.length);
        if (line === "") {
          if (data.length > 0) yield { event: event || "message", data: data.join("\n") };
          event = "";
          data = [];
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") event = value;
        else if (field === "data") data.push(value);
      }
    }
  } finally {
    reader.releaseLock();
  }
}

// Where the first complete line of `text` ends, or null. A CR at the very
// end may be the first half of a CRLF, so it waits for more text.
function lineEnd(text) {
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === "\n") return { at: i, length: 1 };
    if (c === "\r") {
      if (i + 1 === text.length) return null;
      return { at: i, length: text[i + 1] === "\n" ? 2 : 1 };
    }
  }
  return null;
}
