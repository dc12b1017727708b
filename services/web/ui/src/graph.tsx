// A directed graph laid out by dagre and drawn as plain SVG: the agent communication graph
// and the task DAG both use it. Every node and edge carries a data-testid.

import dagre, { type EdgeLabel, type NodeLabel } from "@dagrejs/dagre";
import { useMemo } from "preact/hooks";

export interface GraphNode {
  id: string;
  label: string;
  /** A second, smaller line (role, status, timings). */
  detail?: string;
  className?: string;
  testId: string;
  title?: string;
  selected?: boolean;
  onClick?: () => void;
}

export interface GraphEdge {
  from: string;
  to: string;
  label?: string;
  className?: string;
  testId: string;
}

interface Props {
  nodes: GraphNode[];
  edges: GraphEdge[];
  testId: string;
  direction?: "TB" | "LR";
  empty?: string;
}

const CHAR_WIDTH = 7.2;
const LABEL_HEIGHT = 14;

interface Box {
  x: number;
  y: number;
  width: number;
  height: number;
}

interface Line {
  path: string;
  labelX?: number;
  labelY?: number;
}

interface Placed {
  nodes: Map<string, Box>;
  edges: Map<string, Line>;
  width: number;
  height: number;
}

const edgeKey = (edge: { from: string; to: string }) => `${edge.from}->${edge.to}`;

function layout(nodes: GraphNode[], edges: GraphEdge[], direction: "TB" | "LR"): Placed {
  const graph = new dagre.graphlib.Graph();
  graph.setGraph({ rankdir: direction, nodesep: 28, ranksep: 56, marginx: 12, marginy: 12 });
  graph.setDefaultEdgeLabel(() => ({}));
  for (const node of nodes) {
    const longest = Math.max(node.label.length, (node.detail ?? "").length * 0.85);
    graph.setNode(node.id, {
      width: Math.max(96, Math.round(longest * CHAR_WIDTH) + 24),
      height: node.detail ? 46 : 32,
    });
  }
  const known = new Set(nodes.map((n) => n.id));
  for (const edge of edges) {
    if (!known.has(edge.from) || !known.has(edge.to)) continue;
    const label = edge.label ?? "";
    graph.setEdge(edge.from, edge.to, {
      width: label ? label.length * CHAR_WIDTH * 0.85 : 0,
      height: label ? LABEL_HEIGHT : 0,
      labelpos: "c",
    });
  }
  dagre.layout(graph);
  const placed: Placed = { nodes: new Map(), edges: new Map(), width: 0, height: 0 };
  for (const node of nodes) {
    const box = graph.node(node.id) as NodeLabel;
    placed.nodes.set(node.id, { x: box.x ?? 0, y: box.y ?? 0, width: box.width, height: box.height });
  }
  for (const edge of edges) {
    if (!graph.hasEdge(edge.from, edge.to)) continue;
    const line = graph.edge(edge.from, edge.to) as EdgeLabel;
    const points = line.points ?? [];
    const path = points.map((p, i) => `${i ? "L" : "M"}${p.x.toFixed(1)},${p.y.toFixed(1)}`);
    placed.edges.set(edgeKey(edge), { path: path.join(" "), labelX: line.x, labelY: line.y });
  }
  const size = graph.graph();
  placed.width = Math.ceil(size.width ?? 0);
  placed.height = Math.ceil(size.height ?? 0);
  return placed;
}

export function Graph({ nodes, edges, testId, direction = "LR", empty }: Props) {
  const signature = JSON.stringify([
    nodes.map((n) => [n.id, n.label, n.detail]),
    edges.map((e) => [e.from, e.to, e.label]),
    direction,
  ]);
  // Laid out again only when the shape changes, not when a status or a colour does.
  const placed = useMemo(() => layout(nodes, edges, direction), [signature]);
  if (!nodes.length) {
    return (
      <p class="muted" data-testid={testId}>
        {empty ?? "Nothing yet."}
      </p>
    );
  }
  const marker = `${testId}-arrow`;
  return (
    <div class="graph-scroll">
      <svg
        class="graph"
        data-testid={testId}
        width={placed.width}
        height={placed.height}
        viewBox={`0 0 ${placed.width} ${placed.height}`}
      >
        <defs>
          <marker
            id={marker}
            viewBox="0 0 10 10"
            refX="9"
            refY="5"
            markerWidth="7"
            markerHeight="7"
            orient="auto-start-reverse"
          >
            <path d="M0,0 L10,5 L0,10 z" class="arrow-head" />
          </marker>
        </defs>
        {edges.map((edge) => {
          const line = placed.edges.get(edgeKey(edge));
          if (!line) return null;
          return (
            <g
              key={edgeKey(edge)}
              class={`edge ${edge.className ?? ""}`}
              data-testid={edge.testId}
              data-from={edge.from}
              data-to={edge.to}
            >
              <path d={line.path} marker-end={`url(#${marker})`} />
              {edge.label && line.labelX !== undefined && line.labelY !== undefined && (
                <text x={line.labelX} y={line.labelY + 4} text-anchor="middle" class="edge-label">
                  {edge.label}
                </text>
              )}
            </g>
          );
        })}
        {nodes.map((node) => {
          const box = placed.nodes.get(node.id);
          if (!box) return null;
          const { width, height } = box;
          return (
            <g
              key={node.id}
              class={`node ${node.className ?? ""} ${node.selected ? "selected" : ""}`}
              data-testid={node.testId}
              transform={`translate(${(box.x - width / 2).toFixed(1)},${(box.y - height / 2).toFixed(1)})`}
              onClick={node.onClick}
            >
              {node.title && <title>{node.title}</title>}
              <rect width={width} height={height} rx="6" ry="6" />
              <text x={width / 2} y={node.detail ? 19 : 20} text-anchor="middle" class="node-label">
                {node.label}
              </text>
              {node.detail && (
                <text x={width / 2} y={36} text-anchor="middle" class="node-detail">
                  {node.detail}
                </text>
              )}
            </g>
          );
        })}
      </svg>
    </div>
  );
}
