// An incremental text/event-stream parser, as the HTML standard's
// EventSource parses: lines end with CRLF, LF or CR; "field: value" (one
// space after the colon is dropped); data lines join with "\n"; a line
// starting with ":" is a comment; an empty line dispatches the event.

export interface SSEEvent {
  /** The event name ("message" when the block set none). */
  event: string;
  data: string;
  /** The id field of this block, or null when it had none. */
  id: string | null;
  /** The retry field in milliseconds, or null when it had none (or not a number). */
  retry: number | null;
}

export class SSEParser {
  private buf = "";
  private pendingCR = false;
  private event = "";
  private data: string[] = [];
  private hasData = false;
  private id: string | null = null;
  private retry: number | null = null;
  private first = true;
  private readonly decoder = new TextDecoder();

  /** feedBytes decodes a chunk of the UTF-8 stream and returns the events it completed. */
  feedBytes(chunk: Uint8Array): SSEEvent[] {
    return this.feed(this.decoder.decode(chunk, { stream: true }));
  }

  /** feed parses text and returns the events it completed, in order. */
  feed(text: string): SSEEvent[] {
    if (this.first && text.length > 0) {
      this.first = false;
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    const out: SSEEvent[] = [];
    let s = this.buf + text;
    let start = 0;
    if (this.pendingCR && s.startsWith("\n")) start = 1; // the LF of a CRLF split over two chunks
    this.pendingCR = false;
    for (let i = start; i < s.length; i++) {
      const c = s[i];
      if (c !== "\n" && c !== "\r") continue;
      this.line(s.slice(start, i), out);
      if (c === "\r") {
        if (i + 1 < s.length) {
          if (s[i + 1] === "\n") i++;
        } else {
          this.pendingCR = true;
        }
      }
      start = i + 1;
    }
    this.buf = s.slice(start);
    s = "";
    return out;
  }

  private line(line: string, out: SSEEvent[]): void {
    if (line === "") {
      if (this.hasData || this.event !== "" || this.id !== null || this.retry !== null) {
        // The standard drops blocks without data; welcome/goaway/error always carry data,
        // and a block with only an id or retry still reports them.
        out.push({ event: this.event || "message", data: this.data.join("\n"), id: this.id, retry: this.retry });
      }
      this.event = "";
      this.data = [];
      this.hasData = false;
      this.id = null;
      this.retry = null;
      return;
    }
    if (line[0] === ":") return;
    const colon = line.indexOf(":");
    let field = line;
    let value = "";
    if (colon >= 0) {
      field = line.slice(0, colon);
      value = line.slice(colon + 1);
      if (value[0] === " ") value = value.slice(1);
    }
    switch (field) {
      case "event":
        this.event = value;
        break;
      case "data":
        this.data.push(value);
        this.hasData = true;
        break;
      case "id":
        if (!value.includes("\0")) this.id = value;
        break;
      case "retry":
        if (/^[0-9]+$/.test(value)) this.retry = Number(value);
        break;
    }
  }
}
