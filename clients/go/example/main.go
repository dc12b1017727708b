// Command example runs a two-agent session through the agentmesh public API from Go: it creates
// the session, streams it with Run, drops the stream on purpose after a few events (as a flaky
// network would), resumes with StreamSession from the last seq it saw, and prints every event
// once as a JSON line. It then shows an error's ErrorInfo reason and BadRequest field.
//
//	AGENTMESH_API_KEY=amk_... go run . -target 127.0.0.1:50051 -disconnect-after 3
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	commonv1 "github.com/agentmesh/agentmesh/gen/go/agentmesh/common/v1"
	orchestratorv1 "github.com/agentmesh/agentmesh/gen/go/agentmesh/orchestrator/v1"
)

func main() {
	target := flag.String("target", "127.0.0.1:50051", "the orchestrator, host:port")
	goal := flag.String("goal", "Write a one-line greeting", "what the agents should achieve")
	disconnectAfter := flag.Int("disconnect-after", 0, "drop the stream after N events (0: never)")
	flag.Parse()
	key := os.Getenv("AGENTMESH_API_KEY")
	if key == "" {
		fail("set AGENTMESH_API_KEY (agentmesh keys create, or the key file agentmesh up wrote)")
	}
	conn, err := grpc.Dial(*target, grpc.WithInsecure())
	if err != nil {
		fail("dial: %v", err)
	}
	defer conn.Close()
	client := orchestratorv1.NewOrchestratorServiceClient(conn)
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+key)

	session := createSession(ctx, client, *goal)
	last, terminal := stream(ctx, client, session, 0, *disconnectAfter)
	for terminal == "" { // the stream dropped: resume after the last event seen
		fmt.Fprintf(os.Stderr, "disconnected after seq %d; resuming\n", last)
		last, terminal = stream(ctx, client, session, last, 0)
	}
	fmt.Fprintf(os.Stderr, "events: %d, terminal: %s\n", last, terminal)
	showError(ctx, client)
}

func createSession(ctx context.Context, client orchestratorv1.OrchestratorServiceClient, goal string) string {
	agent := func(id, system string) *commonv1.AgentDefinition {
		return &commonv1.AgentDefinition{
			Name:    id,
			Type:    commonv1.AgentType_AGENT_TYPE_CUSTOM,
			Model:   &commonv1.ModelSelection{Route: "default"},
			Prompts: &commonv1.AgentPrompts{System: system},
		}
	}
	call, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	reply, err := client.CreateSession(call, &orchestratorv1.CreateSessionRequest{
		Session: &commonv1.Session{
			Goal:         goal,
			InlineAgents: []*commonv1.AgentDefinition{agent("greeter", "You are greeter."), agent("critic", "You are critic.")},
			Limits:       &commonv1.SessionLimits{MaxRounds: 2},
		},
	})
	if err != nil {
		fail("CreateSession: %v", err)
	}
	return reply.GetSession().GetName()
}

// stream prints events after `after` until the terminal one (returned) or until the stream
// breaks or `dropAfter` events were seen (terminal ""); it returns the last seq printed.
func stream(ctx context.Context, client orchestratorv1.OrchestratorServiceClient, session string, after int64, dropAfter int) (int64, string) {
	call, cancel := context.WithCancel(ctx)
	defer cancel()
	var next func() (*commonv1.SessionEvent, error)
	if after == 0 {
		events, err := client.Run(call, &orchestratorv1.RunRequest{Session: session})
		if err != nil {
			fail("Run: %v", err)
		}
		next = func() (*commonv1.SessionEvent, error) { r, err := events.Recv(); return r.GetEvent(), err }
	} else {
		events, err := client.StreamSession(call, &orchestratorv1.StreamSessionRequest{Session: session, AfterSeq: after})
		if err != nil {
			fail("StreamSession: %v", err)
		}
		next = func() (*commonv1.SessionEvent, error) { r, err := events.Recv(); return r.GetEvent(), err }
	}
	seen := 0
	for {
		event, err := next()
		if err == io.EOF {
			return after, "" // ended without a terminal event: resume
		}
		if err != nil {
			if status.Code(err) == 14 { // UNAVAILABLE: the connection dropped
				return after, ""
			}
			fail("stream: %v", err)
		}
		kind := payloadKind(event)
		line, _ := json.Marshal(map[string]interface{}{"seq": event.GetSeq(), "payload": kind, "agent": event.GetAgent()})
		fmt.Println(string(line))
		after = event.GetSeq()
		if kind == "session_completed" || kind == "session_failed" || kind == "session_cancelled" {
			return after, kind
		}
		seen++
		if dropAfter > 0 && seen == dropAfter {
			return after, ""
		}
	}
}

func payloadKind(event *commonv1.SessionEvent) string {
	message := event.ProtoReflect()
	field := message.WhichOneof(message.Descriptor().Oneofs().ByName("payload"))
	if field == nil {
		return ""
	}
	return string(field.Name())
}

// showError asks for a session with an empty goal and prints what the error carries.
func showError(ctx context.Context, client orchestratorv1.OrchestratorServiceClient) {
	_, err := client.CreateSession(ctx, &orchestratorv1.CreateSessionRequest{Session: &commonv1.Session{}})
	st := status.Convert(err)
	out := map[string]interface{}{"code": st.Code().String()}
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			out["reason"] = d.GetReason()
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				out["field"] = v.GetField()
			}
		}
	}
	line, _ := json.Marshal(out)
	fmt.Fprintf(os.Stderr, "error: %s\n", line)
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}
