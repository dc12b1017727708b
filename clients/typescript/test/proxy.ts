/** A TCP proxy in front of the orchestrator whose connections a test can cut, as a network would. */

import net from "node:net";

export interface CuttableProxy {
  /** `127.0.0.1:<port>` of the proxy. */
  readonly target: string;
  /** Connections accepted so far. */
  readonly connections: () => number;
  /** Destroy every open connection (both sides), as a dropped network would. */
  cut(): void;
  close(): Promise<void>;
}

export async function startProxy(upstream: string): Promise<CuttableProxy> {
  const [host, port] = splitTarget(upstream);
  const open = new Set<net.Socket>();
  let accepted = 0;
  const server = net.createServer((client) => {
    accepted++;
    const backend = net.connect(port, host);
    for (const socket of [client, backend]) {
      open.add(socket);
      socket.on("close", () => open.delete(socket));
      socket.on("error", () => socket.destroy());
    }
    client.pipe(backend).pipe(client);
    client.on("close", () => backend.destroy());
    backend.on("close", () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address() as net.AddressInfo;
  return {
    target: `127.0.0.1:${address.port}`,
    connections: () => accepted,
    cut: () => {
      for (const socket of open) socket.destroy();
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of open) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

function splitTarget(target: string): [string, number] {
  const at = target.lastIndexOf(":");
  return [target.slice(0, at).replace(/^\[|\]$/g, ""), Number(target.slice(at + 1))];
}
